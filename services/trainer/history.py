"""RunHistory: the run's status.json and metrics.csv, kept in its folder in the store.

The history pages read a run from the store alone, because a Kubernetes run's
own disk (an emptyDir) is gone with its pod. So the trainer uploads
(CheckpointService.PutRunFile):

- with each checkpoint, before its Save: metrics.csv and status.json, so the
  store's metrics cover every row up to the checkpoint's step; after the
  commit, status.json again (it names the new checkpoint);
- every `heartbeat_interval_s` (0: never), from a thread of its own;
- at the end: how the run ended (finished, stopped, preempted, failed) and its exit code.

status.json (format rewind.run-status/1) holds: format, state, started,
updated (RFC 3339 UTC), heartbeat_interval_s, step, episode, steps (the
planned total), task, action_repeat, agent_id, run_id, resumed_from, checkpoint
(this run's last committed one, or ""), steps_per_s, episode_return and
eval_return (null before the first), exit_code (null while running) and
message. A reader takes a "running" status not updated for
3 x heartbeat_interval_s as failed.

Uploads never stop training: a failure is logged once per file and error
kind, and the next upload tries again.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rewind.checkpoint_client import CheckpointClient
from rewind.errors import NotFound, RewindError
from rewind.run_history import METRICS_FILE, STATUS_FILE, STATUS_FORMAT, now_rfc3339
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT_S = 10.0    # per call: a service that does not answer costs the heartbeat thread no more


@dataclass(frozen=True)
class Progress:
    """Where the run is, for its status."""

    step: int
    episode: int
    steps_per_s: float
    episode_return: float
    eval_return: float
    checkpoint: str          # this run's last committed checkpoint, or ""


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


class RunHistory:
    """Uploads one run's status.json and metrics.csv into its folder in the store.

    Args:
        client: the checkpoint service's client.
        settings: the run's settings (agent_id, run, task, steps, heartbeat_interval_s, ...).
        metrics_path: the run's local metrics.csv.
        resumed_from: the checkpoint this session resumed from ("" for a fresh run).
        progress: returns where the run is now (called from any thread).
    """

    def __init__(self, client: CheckpointClient, settings: TrainSettings, metrics_path: Path, resumed_from: str,
                 progress: Callable[[], Progress]) -> None:
        self.client, self.settings = client, settings
        self.metrics_path, self.resumed_from, self.progress = metrics_path, resumed_from, progress
        self.started = now_rfc3339()
        self.uploads = 0            # calls of upload() that stored everything they meant to
        self._lock = threading.Lock()           # one upload at a time: the heartbeat, a checkpoint, the end
        self._uploaded = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logged: set[str] = set()

    # -- the heartbeat -------------------------------------------------------

    def start(self) -> None:
        """Upload now and every heartbeat_interval_s from a daemon thread (nothing when the interval is 0)."""
        if self.settings.heartbeat_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="rewind-run-history", daemon=True)
            self._thread.start()

    def _beat(self) -> None:
        while True:
            self.upload()
            if self._stop.wait(self.settings.heartbeat_interval_s):
                return

    def wait_for_uploads(self, count: int, timeout: float) -> bool:
        """Wait until `count` uploads succeeded in all (for tests); False on timeout."""
        with self._uploaded:
            return self._uploaded.wait_for(lambda: self.uploads >= count, timeout=timeout)

    def close(self, state: str, exit_code: int, message: str = "") -> bool:
        """Stop the heartbeat and upload how the run ended (both files); never raises.

        Args:
            state: finished, stopped, preempted or failed.
            exit_code: the process's exit code.
            message: why, in a line.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * UPLOAD_TIMEOUT_S + 1)
        return self.upload(state=state, exit_code=exit_code, message=message)

    # -- uploads -------------------------------------------------------------

    def upload(self, state: str = "running", exit_code: int | None = None, message: str = "") -> bool:
        """Upload metrics.csv, then status.json (even when the metrics failed); True when both were stored.

        Never raises. Once the run ended (close()), a "running" upload (a save still in flight) is dropped,
        so the status keeps how the run ended.
        """
        with self._lock:
            if state == "running" and self._stop.is_set():
                return False
            metrics = self._put(METRICS_FILE, self._metrics)
            ok = self._put(STATUS_FILE, lambda: self._status(state, exit_code, message)) and metrics
        if ok:
            with self._uploaded:
                self.uploads += 1
                self._uploaded.notify_all()
        return ok

    def upload_status(self) -> bool:
        """Upload status.json alone (after a commit: it names the new checkpoint). Never raises."""
        with self._lock:
            return not self._stop.is_set() and self._put(STATUS_FILE, lambda: self._status("running", None, ""))

    def _put(self, name: str, content: Callable[[], bytes]) -> bool:
        try:
            self.client.put_run_file(self.settings.agent_id, self.settings.run, name, content(),
                                     timeout=UPLOAD_TIMEOUT_S)
        except Exception as exc:  # whatever went wrong (the store, reading the file), training goes on
            self._failed(name, exc)
            return False
        return True

    def _failed(self, name: str, exc: Exception) -> None:
        kind = f"{name}/{type(exc).__name__}"
        if kind in self._logged:
            return
        self._logged.add(kind)
        why = str(exc) if isinstance(exc, RewindError) else f"{type(exc).__name__}: {exc}"
        log.warning("uploading the run's %s to the checkpoint service failed: %s; training goes on, the next "
                    "upload tries again (this kind of failure is logged once)", name, why)

    def _metrics(self) -> bytes:
        """The local metrics.csv up to its last complete row (the loop may be appending one right now)."""
        data = self.metrics_path.read_bytes()
        return data[:data.rfind(b"\n") + 1]

    def _status(self, state: str, exit_code: int | None, message: str) -> bytes:
        return json.dumps(self.status(state, exit_code, message), indent=1).encode()

    def status(self, state: str, exit_code: int | None = None, message: str = "") -> dict:
        """status.json's fields now."""
        s, p = self.settings, self.progress()
        return {
            "format": STATUS_FORMAT, "state": state, "started": self.started, "updated": now_rfc3339(),
            "heartbeat_interval_s": s.heartbeat_interval_s, "step": p.step, "episode": p.episode,
            "steps": s.steps, "task": s.task, "action_repeat": s.action_repeat, "agent_id": s.agent_id,
            "run_id": s.run, "resumed_from": self.resumed_from, "checkpoint": p.checkpoint,
            "steps_per_s": _number(p.steps_per_s), "episode_return": _number(p.episode_return),
            "eval_return": _number(p.eval_return), "exit_code": exit_code, "message": message,
        }


def recover_metrics(client: CheckpointClient, settings: TrainSettings, path: Path, step: int) -> bool:
    """Put the store's metrics.csv of the run in place of the local one, before a resume truncates it.

    A Kubernetes run resumes on an empty disk; the store's copy was uploaded
    before each Save, so it holds every row up to the checkpoint's step. The
    local file is kept when it holds more of those rows (an upload failed).

    Returns:
        Whether the store's copy was taken.
    """
    try:
        stored = client.get_run_file(settings.agent_id, settings.run, METRICS_FILE, timeout=UPLOAD_TIMEOUT_S).content
    except NotFound:
        return False  # a run from before run histories, or a new run id: nothing to recover
    except RewindError as exc:
        log.warning("the run's metrics.csv could not be read from the checkpoint service (%s); going on with "
                    "the local one", exc)
        return False
    local = path.read_bytes() if path.exists() else b""
    if _rows_up_to(stored, step) < _rows_up_to(local, step):
        return False
    tmp = path.with_name(f".{path.name}.recovered")
    tmp.write_bytes(stored)
    tmp.replace(path)
    log.info("metrics history of %s/%s recovered from the store (%d rows up to step %d)", settings.agent_id,
             settings.run, _rows_up_to(stored, step), step)
    return True


def _rows_up_to(data: bytes, step: int) -> int:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"))))[1:]
    return sum(1 for r in rows if r and r[0].isdigit() and int(r[0]) <= step)
