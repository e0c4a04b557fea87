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
- buffer.snapshot (a sharded run: buffer.shard-<i>.snapshot for each shard) and
  test_buffer.snapshot, pulled by the checkpoint service: block indexes, whose
  content-addressed blocks the run's blocks/ folder holds once for every
  checkpoint (only blocks the store lacks are uploaded);
- in the manifest: the settings and agent config, metrics, the overrides, and
  the cut (`extra.cut`): the shard count, routing seed and generation, and what
  each buffer held when it was captured (episodes, transitions, limiter counts).

A cut of a sharded run captures every shard at the same boundary (no batch
stream open, no episode being added), in parallel, so the shards' snapshots
are of one moment of the run.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from rewind.buffer.v1 import buffer_pb2
from rewind.checkpoint_client import CheckpointClient, buffer_source
from rewind.errors import RewindError, Unavailable
from rewind.sharded_buffer_client import LIVE, ShardedBufferClient
from rewind_trainer.agent import policy_tensors
from rewind_trainer.connections import BufferPart

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
    captures: dict[str, str]             # snapshot file -> capture id
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


def header_of(data: bytes) -> tuple[dict, int]:
    """A safetensors file's JSON header, and where its data begin."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), 8 + size


def with_metadata(data: bytes, metadata: dict[str, str]) -> bytes:
    """A safetensors file `data` with `metadata` as its __metadata__, in the order given."""
    header, start = header_of(data)
    text = json.dumps({"__metadata__": metadata, **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes, so that the data stays aligned
    return len(text).to_bytes(8, "little") + text + data[start:]


def policy_agent_config(data: bytes) -> dict:
    """The agent config a policy.safetensors records ({} when none: not written by a trainer)."""
    return json.loads(header_of(data)[0].get("__metadata__", {}).get("agent_config", "{}"))


@dataclass(frozen=True)
class Cut:
    """What a sharded run's checkpoint must record besides its buffers' snapshots."""

    routing_seed: int
    generation: int


class Checkpointer:
    """Saves checkpoints of one run on a background thread, one at a time.

    Args:
        client: the checkpoint service's client.
        agent_id: the agent.
        run_id: the run.
        parts: the buffers a checkpoint captures (each shard of `buffer`, and `test_buffer`).
        retention: the run's retention policy, sent with every save.
        cut: the routing seed and generation every checkpoint records.
        replay: the sharded client of a sharded run: no cut is taken while one of its shards is lost.
        resumed_from: path of the checkpoint this run resumed from (its last committed one, until the next).
        resumed_at: the step of that checkpoint.
    """

    def __init__(self, client: CheckpointClient, agent_id: str, run_id: str, parts: Sequence[BufferPart],
                 retention: dict, cut: Cut, replay: ShardedBufferClient | None = None, resumed_from: str = "",
                 resumed_at: int = -1) -> None:
        self.client = client
        self.agent_id, self.run_id = agent_id, run_id
        self.parts = {part.file: part for part in parts}
        self.retention, self.cut, self.replay = retention, cut, replay
        self.resumed_from = resumed_from
        self.status = CheckpointStatus(path=resumed_from, step=resumed_at if resumed_from else -1)
        self._current: SaveJob | None = None
        self._lock = threading.Lock()
        # Captures go out in parallel: a cut's stall is one capture's round trip, not one per shard.
        self._pool = ThreadPoolExecutor(max_workers=len(self.parts), thread_name_prefix="rewind-capture")
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
        """Capture every buffer and the trainer's state now, and upload them in the background.

        Args:
            step: the step the checkpoint holds.
            episode: the episode counter.
            state_fn: returns the trainer's state, copied.
            expected: episodes each buffer must have seen (checked by the buffer service; not per shard,
                since a shard restored after its loss has lost the episodes it took since the last cut).
            metrics, config, extra: for the manifest.

        Raises:
            RewindError: a capture failed, or a shard is lost (nothing was started).
        """
        started = time.perf_counter()
        self._check_shards()
        captured = self._capture(expected)
        state = state_fn()
        blocking_ms = (time.perf_counter() - started) * 1000
        extra = {**extra, "cut": self._record(captured)}
        job = SaveJob(step, episode, state, {f: c.capture_id for f, c in captured.items()}, metrics, config, extra,
                      blocking_ms)
        with self._lock:
            self._current = job
        threading.Thread(target=self._save, args=(job,), name=f"checkpoint-{step}", daemon=True).start()
        return job

    def _check_shards(self) -> None:
        if self.replay is None:
            return
        lost = [f"{s.address} ({s.state}: {s.lost[-1] if s.lost else ''})" for s in self.replay.shards
                if s.state != LIVE]
        if lost:
            raise Unavailable(f"cut: shard {', '.join(lost)} is not a shard of the run now; a cut needs every "
                              "shard, and is taken again once the lost one is restored")

    def _capture(self, expected: dict[str, int]) -> dict[str, buffer_pb2.CaptureResponse]:
        """Capture every part at once; if one fails, the others' captures are released and it is raised."""
        named = {}
        for part in self.parts.values():
            named[part.name] = named.get(part.name, 0) + 1
        jobs = {file: self._pool.submit(part.client.capture,
                                        expected.get(part.name, 0) if named[part.name] == 1 else 0)
                for file, part in self.parts.items()}
        captured, failure = {}, None
        for file, job in jobs.items():
            try:
                captured[file] = job.result()
            except RewindError as exc:
                failure = failure or exc
        if failure is not None:
            self._release(captured)
            raise failure
        return captured

    def _record(self, captured: dict[str, buffer_pb2.CaptureResponse]) -> dict:
        """The cut as the manifest records it (extra.cut)."""
        buffers = []
        for file, capture in captured.items():
            part = self.parts[file]
            entry = {"buffer": part.name, "file": file, "address": part.client.address,
                     "episodes_added": capture.episodes_added, "transitions": capture.transitions}
            if capture.HasField("rate_limiter"):
                limiter = capture.rate_limiter
                entry["rate_limiter"] = {"inserts": limiter.inserts, "samples": limiter.samples,
                                         "paused": limiter.paused}
            buffers.append(entry)
        shards = sum(part.name == "buffer" for part in self.parts.values())
        return {"shards": shards, "routing_seed": self.cut.routing_seed, "generation": self.cut.generation,
                "buffers": buffers}

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
            buffers = [buffer_source(part.client.address, part.name, file=file, capture_id=job.captures[file],
                                     blocks=True) for file, part in self.parts.items()]
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
        self._release({file: buffer_pb2.CaptureResponse(capture_id=c) for file, c in job.captures.items()})

    def _release(self, captured: dict[str, buffer_pb2.CaptureResponse]) -> None:
        """Take away captures no save took, so they do not fill the buffer services.

        The first message of a capture's stream takes it; dropping the stream then releases it.
        """
        for file, capture in captured.items():
            try:
                for _ in self.parts[file].client.snapshot_stream(capture_id=capture.capture_id, timeout=600):
                    break
            except RewindError:
                pass  # already taken by the checkpoint service, or expired: either way it is gone
