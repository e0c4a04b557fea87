"""The trainer's gRPC service (rewind.trainer.v1): status, checkpoint-now, stop, and the weights by version.

Calls never touch the loop directly: they leave requests in `Control`, which
the loop serves at its next boundary (within one batch stream's worth of
updates), so a checkpoint is always taken where the state is consistent.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, TimeoutError
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rewind.errors import DeadlineExceeded, FailedPrecondition
from rewind.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from rewind_runtime.host import ServiceBinding
from rewind_trainer.weights import WeightsBoard, chunks

if TYPE_CHECKING:
    from rewind_runtime.threads import ThreadChoice
    from rewind_trainer.checkpointer import Checkpointer
    from rewind_trainer.loop import Trainer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
# A read token may ask for the status; checkpoint-now and stop need a write token.
READ_METHODS = ("GetStatus",)
# What a collector token may call here: the learner's weights, and nothing else.
COLLECTOR_METHODS = ("GetWeights",)


class Control:
    """Requests to the loop from outside: stop, and checkpoint now.

    `stopping` is also the trainer's interrupt: once set, an evaluation in
    progress is abandoned and the loop stops at its next boundary.
    """

    def __init__(self) -> None:
        self.stop_reason = ""
        self.stop_time: float | None = None
        self.stopping = threading.Event()
        self.checkpoint_waiters: list[Future] = []
        self._lock = threading.Lock()

    def request_stop(self, reason: str) -> None:
        with self._lock:
            if not self.stopping.is_set():
                self.stop_reason, self.stop_time = reason, time.monotonic()
                self.stopping.set()

    def stop_deadline(self, grace_s: float) -> float:
        """When the checkpoint on the way out must be committed (time.monotonic())."""
        return (self.stop_time or time.monotonic()) + grace_s

    def request_checkpoint(self) -> Future:
        """A future that resolves to (step, committed path) of the next checkpoint."""
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


@dataclass(frozen=True)
class RunIdentity:
    """Which run a trainer is, for its status."""

    agent_id: str
    run_id: str
    resumed_from: str = ""


class TrainerServicer(trainer_pb2_grpc.TrainerServiceServicer):
    """rewind.trainer.v1.TrainerService: status, checkpoint-now and stop of one running trainer."""

    def __init__(self, control: Control, trainer: Trainer, checkpointer: Checkpointer, run: RunIdentity,
                 threads: ThreadChoice, weights: WeightsBoard | None = None) -> None:
        self.control, self.trainer, self.checkpointer, self.run = control, trainer, checkpointer, run
        self.threads = threads
        self.weights = weights or WeightsBoard(generation=0, enabled=False)

    def status(self) -> trainer_pb2.TrainerStatus:
        trainer, s, c = self.trainer, self.trainer.state, self.checkpointer.status
        status = trainer_pb2.TrainerStatus(
            agent_id=self.run.agent_id, run_id=self.run.run_id, resumed_from=self.run.resumed_from,
            task=trainer.settings.task, total_steps=trainer.settings.steps, step=s.step, episode=s.episode,
            phase="stopping" if self.control.stopping.is_set() and trainer.phase != "done" else trainer.phase,
            steps_per_second=trainer.steps_per_second, eval_return=s.eval_return, eval_step=s.last_eval_step,
            acting_mode=trainer.agent.mode,
            recent_returns=s.recent_returns, losses={k: float(v) for k, v in s.losses.items()},
            torch_threads=self.threads.threads, torch_threads_reason=self.threads.reason, updates=trainer.updates,
            collectors=trainer.settings.collectors, limiter_retries=getattr(trainer, "limiter_retries", 0))
        status.last_checkpoint.CopyFrom(trainer_pb2.CheckpointState(
            path=c.path, step=max(c.step, 0), blocking_ms=c.blocking_ms, error=c.error,
            in_flight=int(self.checkpointer.busy)))
        return status

    def GetStatus(self, request, context):
        return trainer_pb2.GetStatusResponse(status=self.status())

    def CreateCheckpoint(self, request, context):
        if self.trainer.phase == "done":
            raise FailedPrecondition("trainer: already done; its final checkpoint is in GetStatus")
        if self.control.stopping.is_set():
            raise FailedPrecondition("trainer: stopping; it writes a checkpoint on its way out")
        future = self.control.request_checkpoint()
        if not request.wait:
            return trainer_pb2.CreateCheckpointResponse(step=self.trainer.state.step)
        remaining = context.time_remaining()  # huge when the caller set no deadline
        try:
            step, path = future.result(timeout=remaining if remaining is not None and remaining < 86_400 else None)
        except TimeoutError:
            raise DeadlineExceeded("wait: the checkpoint did not commit before the call's deadline; it goes on "
                                   "in the background, see GetStatus") from None
        return trainer_pb2.CreateCheckpointResponse(step=step, path=path)

    def Stop(self, request, context):
        self.control.request_stop("the Stop call")
        return trainer_pb2.StopResponse(step=self.trainer.state.step)


    def GetWeights(self, request, context):
        remaining = context.time_remaining()
        # A tenth early, so that the caller gets the reason, not its own bare deadline.
        published = self.weights.wait(request.min_version, None if remaining is None else 0.9 * remaining)
        yield from chunks(published, self.weights.generation, self.weights.routing_seed, self.weights.live_shards())


def binding(servicer: TrainerServicer) -> ServiceBinding:
    return ServiceBinding(SERVICE_NAME, servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
                          read_methods=READ_METHODS, collector_methods=COLLECTOR_METHODS)
