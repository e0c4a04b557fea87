"""The trainer's gRPC service (rewind.trainer.v1): status, checkpoint-now, stop.

Calls never touch the loop directly: they leave requests in `Control`, which
the loop serves at its next boundary (within one batch stream's worth of
updates), so a checkpoint is always taken where the state is consistent.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, TimeoutError
from typing import TYPE_CHECKING

from rewind.errors import DeadlineExceeded, FailedPrecondition
from rewind.serving import ServiceBinding, handle_errors
from rewind.trainer.v1 import trainer_pb2, trainer_pb2_grpc

if TYPE_CHECKING:
    from rewind_trainer.checkpointer import Checkpointer
    from rewind_trainer.loop import Trainer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name


class Control:
    """Requests to the loop (stop, checkpoint now) and what status reads."""

    def __init__(self) -> None:
        self.stop_reason = ""
        self.stop_time: float | None = None
        self.stopping = threading.Event()
        self.checkpoint_waiters: list[Future] = []
        self._lock = threading.Lock()
        self.trainer: Trainer | None = None
        self.checkpointer: Checkpointer | None = None
        self.agent_id = self.run_id = self.resumed_from = ""

    def request_stop(self, reason: str) -> None:
        with self._lock:
            if not self.stopping.is_set():
                self.stop_reason, self.stop_time = reason, time.monotonic()
                self.stopping.set()
        if self.trainer is not None:
            self.trainer.interrupt.set()

    def stop_deadline(self, grace_s: float) -> float:
        """When the checkpoint on the way out must be committed (time.monotonic())."""
        return (self.stop_time or time.monotonic()) + grace_s

    def request_checkpoint(self) -> Future:
        """A future that resolves to the committed path of the next checkpoint."""
        future: Future = Future()
        with self._lock:
            self.checkpoint_waiters.append(future)
        return future

    def return_checkpoint_waiters(self, waiters: list[Future]) -> None:
        """Put requests back, first in line, to be served at a later boundary."""
        with self._lock:
            self.checkpoint_waiters[:0] = waiters

    def take_checkpoint_waiters(self) -> list[Future]:
        with self._lock:
            waiters, self.checkpoint_waiters = self.checkpoint_waiters, []
        return waiters

    def status(self) -> trainer_pb2.TrainerStatus:
        trainer, checkpointer = self.trainer, self.checkpointer
        status = trainer_pb2.TrainerStatus(agent_id=self.agent_id, run_id=self.run_id,
                                           resumed_from=self.resumed_from, eval_return=math.nan)
        if trainer is not None:
            s = trainer.state
            status.task, status.total_steps = trainer.settings.task, trainer.settings.steps
            status.phase = "stopping" if self.stopping.is_set() and trainer.phase != "done" else trainer.phase
            status.step, status.episode = s.step, s.episode
            status.steps_per_second = trainer.steps_per_second
            status.recent_returns.extend(s.recent_returns)
            status.eval_return = s.eval_return
            status.losses.update({k: float(v) for k, v in s.losses.items()})
            status.acting_mode = trainer.agent.mode
        if checkpointer is not None:
            c = checkpointer.status
            status.last_checkpoint.CopyFrom(trainer_pb2.CheckpointState(
                path=c.path, step=max(c.step, 0), blocking_ms=c.blocking_ms, error=c.error,
                in_flight=int(checkpointer.busy)))
        return status


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """rewind.trainer.v1.TrainerService over a Control."""

    def __init__(self, control: Control) -> None:
        self.control = control

    @handle_errors
    def GetStatus(self, request, context):
        return trainer_pb2.GetStatusResponse(status=self.control.status())

    @handle_errors
    def CreateCheckpoint(self, request, context):
        trainer = self.control.trainer
        if trainer is None or trainer.phase in ("starting", "done"):
            raise FailedPrecondition("trainer: not training yet (or already done); try again once step > 0")
        if self.control.stopping.is_set():
            raise FailedPrecondition("trainer: stopping; it writes a checkpoint on its way out")
        future = self.control.request_checkpoint()
        if not request.wait:
            return trainer_pb2.CreateCheckpointResponse(step=trainer.state.step)
        remaining = context.time_remaining()  # huge when the caller set no deadline
        try:
            step, path = future.result(timeout=remaining if remaining is not None and remaining < 86_400 else None)
        except TimeoutError:
            raise DeadlineExceeded("wait: the checkpoint did not commit before the call's deadline; it goes on "
                                   "in the background, see GetStatus") from None
        return trainer_pb2.CreateCheckpointResponse(step=step, path=path)

    @handle_errors
    def Stop(self, request, context):
        self.control.request_stop("the Stop call")
        trainer = self.control.trainer
        return trainer_pb2.StopResponse(step=trainer.state.step if trainer else 0)


def binding(control: Control) -> ServiceBinding:
    return ServiceBinding(SERVICE_NAME, TrainerServicer(control), trainer_pb2_grpc.add_TrainerServiceServicer_to_server)
