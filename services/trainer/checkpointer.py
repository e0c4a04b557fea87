"""Checkpoints without stalling learning.

At a boundary the trainer pays only for two buffer captures (the buffer
service records the capture point under its lock and copies no rows) and a
deep copy of its own state.
Serialising, uploading and the buffer snapshots then happen on a background
thread while training goes on: through the checkpoint service, except that on
an S3 store trainer.pt (and any file of CheckpointClient.DIRECT_MIN_BYTES or
more) goes straight to the store at a URL the service presigns, to an endpoint
the store_endpoints setting allows. A failed save
is logged and reported in the status; the next interval tries again.

A checkpoint holds:
- trainer.pt: agent (model, both optimisers, Q-scale, its generator, the plan),
  loop state with the partial episode, every RNG, the env state;
- policy.safetensors: the tensors acting needs, for evaluation and deployment;
- buffer.snapshot and test_buffer.snapshot, pulled by the checkpoint service:
  block indexes, whose content-addressed blocks the run's blocks/ folder
  holds once for every checkpoint (only blocks the store lacks are uploaded);
- in the manifest: the settings and agent config, metrics, the overrides.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from rewind.buffer_client import BufferClient
from rewind.checkpoint_client import CheckpointClient, buffer_source
from rewind.errors import RewindError
from rewind_trainer.agent import policy_tensors

log = logging.getLogger(__name__)

FORMAT = "rewind.trainer/1"
TRAINER_FILE = "trainer.pt"
POLICY_FILE = "policy.safetensors"


@dataclass
class SaveJob:
    """One checkpoint on its way to the store."""

    step: int
    episode: int
    state: dict
    captures: dict[str, str]             # buffer name -> capture id
    metrics: dict[str, float]
    config: dict
    extra: dict
    blocking_ms: float
    done: Future = field(default_factory=Future)   # -> committed path, or the save's exception


@dataclass
class CheckpointStatus:
    path: str = ""
    step: int = -1
    blocking_ms: float = 0.0
    error: str = ""
    saves: int = 0
    failures: int = 0
    committed_at: float = 0.0   # epoch seconds of the last commit by this run (0: none yet)


def encode_trainer_state(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    return buf.getvalue()


def decode_trainer_state(data: bytes, where: str) -> dict:
    """The trainer state in a trainer.pt.

    Raises:
        DataLoss: not a trainer state this version can read.
    """
    from rewind.errors import DataLoss

    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise DataLoss(f"{where}: {TRAINER_FILE} cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise DataLoss(f"{where}: {TRAINER_FILE} has format {found!r}, this trainer reads {FORMAT!r}")
    return state


def encode_policy(model_state: dict[str, torch.Tensor], agent_config: dict) -> bytes:
    """policy.safetensors: the same policy gives the same bytes (and sha256), save after save and across resumes."""
    from safetensors.torch import save

    metadata = {"format": "rewind.policy/1", "agent_config": json.dumps(agent_config)}
    # safetensors writes __metadata__ from a hash map, in an order that changes from save to save: the header
    # is written again here, its metadata in one fixed order (the tensors' entries and data are safetensors').
    return with_metadata(save(policy_tensors(model_state)), metadata)


def with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """A safetensors file `data` with `metadata` as its __metadata__, in the order given."""
    size = int.from_bytes(data[:8], "little")
    header = {"__metadata__": metadata, **json.loads(data[8:8 + size])}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes, so that the data stays aligned
    return len(text).to_bytes(8, "little") + text + data[8 + size:]


class Checkpointer:
    """Saves checkpoints of one run on a background thread, one at a time.

    Args:
        client: the checkpoint service's client.
        agent_id: the agent.
        run_id: the run.
        buffer: client of the `buffer` buffer (its service is where captures live).
        test_buffer: client of the `test_buffer` buffer.
        retention: the run's retention policy, sent with every save.
        resumed_from: path of the checkpoint this run resumed from (its last committed one, until the next).
        resumed_at: the step of that checkpoint.
    """

    def __init__(self, client: CheckpointClient, agent_id: str, run_id: str, buffer: BufferClient,
                 test_buffer: BufferClient, retention: dict, resumed_from: str = "", resumed_at: int = -1) -> None:
        self.client = client
        self.agent_id, self.run_id = agent_id, run_id
        self.buffers = {"buffer": buffer, "test_buffer": test_buffer}
        self.retention = retention
        self.resumed_from = resumed_from
        self.status = CheckpointStatus(path=resumed_from, step=resumed_at if resumed_from else -1)
        self._current: SaveJob | None = None
        self._lock = threading.Lock()
        # The run's history (history.RunHistory): uploaded before each Save, so the store's metrics cover every
        # row up to the checkpoint's step, and its status after each commit. Neither may raise.
        self.before_save: Callable[[], object] = lambda: None
        self.after_commit: Callable[[], object] = lambda: None

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._current is not None and not self._current.done.done()

    def start(self, step: int, episode: int, state_fn: Callable[[], dict], expected: dict[str, int],
              metrics: dict[str, float], config: dict, extra: dict) -> SaveJob:
        """Capture both buffers and the trainer's state now, and upload them in the background.

        Args:
            step: the step the checkpoint holds.
            episode: the episode counter.
            state_fn: returns the trainer's state, copied.
            expected: episodes each buffer must have seen (checked by the buffer service).
            metrics, config, extra: for the manifest.

        Raises:
            RewindError: a capture failed (nothing was started).
        """
        started = time.perf_counter()
        captures = {}
        for name, client in self.buffers.items():
            captures[name] = client.capture(expect_episodes_added=expected.get(name, 0)).capture_id
        state = state_fn()
        blocking_ms = (time.perf_counter() - started) * 1000
        job = SaveJob(step, episode, state, captures, metrics, config, extra, blocking_ms)
        with self._lock:
            self._current = job
        threading.Thread(target=self._save, args=(job,), name=f"checkpoint-{step}", daemon=True).start()
        return job

    def report_error(self, message: str) -> None:
        """Show a failure to start a checkpoint in the status (the next interval retries)."""
        self.status.error = message

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the save in flight, if any (its outcome is in `status`)."""
        job = self._current
        if job is not None:
            job.done.exception(timeout=timeout)  # raises TimeoutError; a failure is recorded in status

    def _save(self, job: SaveJob) -> None:
        self.before_save()
        try:
            files = {TRAINER_FILE: encode_trainer_state(job.state),
                     POLICY_FILE: encode_policy(job.state["agent"]["model"], job.config.get("agent_config", {}))}
            # As blocks: the store keeps each block once per run, so a save uploads the episodes added since
            # the last one, not the buffers.
            buffers = [buffer_source(client.address, name, capture_id=job.captures[name], blocks=True)
                       for name, client in self.buffers.items()]
            saved = self.client.save(self.agent_id, self.run_id, job.step, files, episode=job.episode,
                                     metrics=job.metrics, config=job.config, extra=job.extra,
                                     resumed_from=self.resumed_from, buffers=buffers, retention=self.retention)
        except Exception as exc:
            message = str(exc) if isinstance(exc, RewindError) else f"{type(exc).__name__}: {exc}"
            log.warning("checkpoint at step %d failed: %s; training goes on, the next checkpoint retries",
                        job.step, message)
            self.status.error, self.status.failures = message, self.status.failures + 1
            self._release_captures(job)
            job.done.set_exception(exc)
            return
        path = saved.checkpoint.path
        self.status = CheckpointStatus(path, job.step, job.blocking_ms, "", self.status.saves + 1,
                                       self.status.failures, time.time())
        for deleted in saved.deleted:
            log.info("retention removed %s", deleted)
        log.info("checkpoint %s committed (trainer blocked %.1f ms; uploaded %.1f MiB, %.1f MiB of it straight to "
                 "the store; %.1f MiB of buffer blocks already stored)", path, job.blocking_ms,
                 saved.uploaded_bytes / 2**20, saved.direct_bytes / 2**20, saved.deduplicated_bytes / 2**20)
        self.after_commit()  # before the result: the run's final status must come after this one
        job.done.set_result(path)

    def _release_captures(self, job: SaveJob) -> None:
        """Take away captures the failed save did not take, so they do not fill the buffer service.

        The first message of a capture's stream takes it; dropping the stream then releases it.
        """
        for name, capture_id in job.captures.items():
            try:
                for _ in self.buffers[name].snapshot_stream(capture_id=capture_id, timeout=600):
                    break
            except RewindError:
                pass  # already taken by the checkpoint service, or expired: either way it is gone
