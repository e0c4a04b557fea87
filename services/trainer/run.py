"""train(): one run of the trainer, read top to bottom like TD-MPC2's train.py.

    result = train(TrainSettings(task="Pendulum-v1", steps=8000))
    print(result.eval_return, result.checkpoint)

It builds every object from the settings and hands it in: the connections,
the plan (every check, before anything is written), the buffers, the agent,
the loop, the checkpoint schedule and the trainer's own service.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from rewind.checkpoint_client import CheckpointClient
from rewind.errors import Internal, RewindError
from rewind.sharded_buffer_client import LIVE
from rewind_runtime import host_share
from rewind_runtime.host import ServiceHost
from rewind_runtime.host_share import HostShare
from rewind_runtime.threads import ThreadChoice, configure_torch_threads
from rewind_trainer import service
from rewind_trainer.agent import TDMPC2
from rewind_trainer.checkpointer import Checkpointer, CheckpointStatus, Cut, encode_policy
from rewind_trainer.connections import BUFFERS, Services, connect, own_buffers
from rewind_trainer.history import Progress, RunHistory, recover_metrics
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.learner import Learner, shard_limiter
from rewind_trainer.loop import Stopped, Trainer
from rewind_trainer.metrics import MetricsLog
from rewind_trainer.plan import Plan, check_task, prepare
from rewind_trainer.plot import plot_learning_curve
from rewind_trainer.prometheus import TrainerCollector
from rewind_trainer.schedule import CheckpointSchedule
from rewind_trainer.settings import TrainSettings
from rewind_trainer.shard_recovery import ShardRecovery
from rewind_trainer.tensorboard import TensorBoardLog, check_installed
from rewind_trainer.weights import Publisher, WeightsBoard

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a run ended."""

    settings: TrainSettings
    step: int
    episode: int
    eval_return: float
    stopped: bool                 # stopped by SIGTERM/the Stop call, not finished
    checkpoint: str               # the last committed checkpoint ("" if none)
    resumed_from: str
    run_dir: Path
    agent: TDMPC2
    exit_code: int = 0
    committed: bool = True        # the last checkpoint (final, or on the way out) committed
    checkpoints: CheckpointStatus | None = None   # saves, failures, the last error and blocking time


def train(settings: TrainSettings, *, explicit: set[str] | None = None, handle_signals: bool = False,
          control: service.Control | None = None, pages_url: str = "",
          companions: Callable[[str], AbstractContextManager] = lambda _address: nullcontext()) -> TrainResult:
    """Run (or resume) training.

    Args:
        settings: what to run; see TrainSettings.
        explicit: names of the settings the user gave (default: those that
            differ from the defaults). On resume only these override the checkpoint.
        handle_signals: SIGTERM and SIGINT checkpoint and stop (main thread only).
        control: requests from outside (tests); the trainer service gets the same one.
        pages_url: where the checkpoint service serves its history pages (local services): the run's page
            is logged at the start.
        companions: given the trainer service's address once it serves, what runs beside the loop until it
            ends (a learner's local collectors).

    Raises:
        InvalidArgument: bad settings or an unknown task.
        Unavailable: a service cannot be reached (named with its address).
        NotFound, DataLoss, FailedPrecondition: the checkpoint to resume from
            is missing, corrupt or does not fit (nothing is written then).
    """
    explicit = _changed(settings) if explicit is None else explicit
    control = control or service.Control()
    check_task(settings, explicit)
    if settings.tensorboard:
        check_installed()  # a missing extra is said before anything is called or written
    with connect(settings) as services:
        plan = prepare(settings, explicit, services)
        settings = plan.settings
        threads = configure_torch_threads(settings.torch_threads, "trainer")  # once checked, before any work
        limiter = shard_limiter(plan.agent_config, settings, plan.env.episode_length) if settings.collectors else None
        own_buffers(services, plan.agent_config, plan.resumed_from, plan.generation, limiter)
        agent = TDMPC2(plan.agent_config, seed=settings.seed, device=settings.device)
        metrics, board = _metrics_logs(settings, plan)
        checkpointer = Checkpointer(services.ckpt, settings.agent_id, settings.run, services.parts,
                                    _retention(settings), Cut(settings.seed, plan.generation), services.sharded,
                                    plan.resumed_from, _resumed_at(plan))
        if services.sharded is not None:
            ShardRecovery(services, plan.agent_config, checkpointer, plan.generation).attach()
        schedule = CheckpointSchedule(checkpointer, control, plan.agent_config,
                                      plan.resume.history if plan.resume else [])
        trainer = _loop(settings, plan, agent, services, metrics, schedule, control)
        if plan.resume is not None:
            _continue(trainer, plan, metrics, services.ckpt)
        history = _run_history(services.ckpt, settings, metrics, plan.resumed_from, trainer, checkpointer,
                               pages_url)
        identity = service.RunIdentity(settings.agent_id, settings.run, plan.resumed_from)
        weights = WeightsBoard(plan.generation, enabled=settings.weights_every > 0, routing_seed=settings.seed,
                               live_shards=partial(live_shards, services))
        servicer = service.TrainerServicer(control, trainer, checkpointer, identity, threads, weights)
        with _recorded(history, board):
            with _trainer_service(settings, servicer, explicit) as address, _signals(control, handle_signals), \
                    _settled(control), _sharing_cpus(settings, servicer, trainer), \
                    _publishing(settings, trainer, weights, plan.agent_config), companions(address):
                stopped, ok = _run(trainer, schedule, control)
            plot_learning_curve(metrics.path, f"{settings.task}, {agent.mode}, seed {settings.seed}",
                                settings.action_repeat)
            exit_code = 1 if not ok else settings.preempt_exit_code if stopped else 0
            state, message = _ending(stopped, ok, control.stop_reason, trainer.state.step)
            history.close(state, exit_code, message)
        s = trainer.state
        return TrainResult(settings, s.step, s.episode, s.eval_return, stopped, checkpointer.status.path,
                           plan.resumed_from, metrics.path.parent, agent, exit_code, ok, checkpointer.status)


def _loop(settings: TrainSettings, plan: Plan, agent: TDMPC2, services: Services, metrics: MetricsLog,
          schedule: CheckpointSchedule, control: service.Control) -> Trainer:
    """The single-process loop, or with --collectors the learner's."""
    args = (settings, plan.env, agent, services.buffer, services.test_buffer, metrics)
    options = {"on_boundary": schedule.on_boundary, "interrupt": control.stopping, "progress": settings.progress}
    if not settings.collectors:
        return Trainer(*args, **options)
    shards = [part.client for part in services.parts if part.name == BUFFERS[0]]
    return Learner(*args, shards=shards, **options)


def live_shards(services: Services) -> list[int]:
    """The places of the shards a sharded run samples now (lost and not yet restored ones left out)."""
    replay = services.sharded
    return [] if replay is None else [shard.index for shard in replay.shards if shard.state == LIVE]


def _run(trainer: Trainer, schedule: CheckpointSchedule, control: service.Control) -> tuple[bool, bool]:
    """The loop, then the last checkpoint; returns (stopped, whether that checkpoint committed)."""
    try:
        trainer.run()
    except Stopped:
        log.info("stopping at step %d (%s)", trainer.state.step, control.stop_reason)
        return True, schedule.final_checkpoint(trainer, control.stop_deadline(trainer.settings.stop_grace_s))
    trainer.final_evaluation()
    return False, schedule.final_checkpoint(trainer, deadline=None)


def _continue(trainer: Trainer, plan: Plan, metrics: MetricsLog, client: CheckpointClient) -> None:
    """Put the loop, the agent, every generator and the metrics back where the checkpoint left them."""
    trainer.load_state_dict(plan.resume.state)
    trainer.agent.set_lr(plan.settings.learning_rate)  # the optimisers' saved state carries the old rate
    # The local metrics.csv is gone with a Kubernetes pod's emptyDir; the store's holds every row up to the step.
    recover_metrics(client, plan.settings, metrics.path, trainer.state.step)
    s = trainer.state
    # A checkpoint at an episode's end is taken before the episode is added, and before the evaluation due
    # there: their rows at its step were written after it, and the resumed loop writes them again.
    again = ("train",) * s.unadded + ("eval",) * (s.last_eval_step != s.step)
    metrics.truncate_after(s.step, again)
    changes = ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in plan.resume.overrides.items())
    learner = f" (update {trainer.updates}: the policy version collectors must hold)" if plan.settings.collectors \
        else ""
    log.info("resuming %s at step %d%s%s", plan.resumed_from, trainer.state.step, learner,
             f" with overrides: {changes}" if changes else "")


def _metrics_logs(settings: TrainSettings, plan: Plan) -> tuple[MetricsLog, TensorBoardLog | None]:
    """The run's metrics.csv, and its TensorBoard scalars with --tensorboard (each row goes to both)."""
    run_dir = Path(settings.out_dir) / settings.agent_id / settings.run
    board = None
    if settings.tensorboard:
        board = TensorBoardLog(run_dir, settings.action_repeat, _resumed_at(plan) if plan.resume else None)
    return MetricsLog(run_dir, on_row=board.write if board else None), board


def _run_history(client: CheckpointClient, settings: TrainSettings, metrics: MetricsLog, resumed_from: str,
                 trainer: Trainer, checkpointer: Checkpointer, pages_url: str) -> RunHistory:
    """The run's status.json and metrics.csv in the store: with each checkpoint, each heartbeat and at the end."""
    def progress() -> Progress:
        s, c = trainer.state, checkpointer.status
        # Until its first commit, a run resumed from another run's checkpoint has none of its own.
        own = c.saves > 0 or c.path.rstrip("/").split("/")[-3:-1] == [settings.agent_id, settings.run]
        return Progress(s.step, s.episode, trainer.steps_per_second, s.episode_return, s.eval_return,
                        c.path if own else "")

    history = RunHistory(client, settings, metrics.path, resumed_from, progress)
    checkpointer.before_save, checkpointer.after_commit = history.upload, history.upload_status
    if pages_url:
        log.info("training history: %s/runs/%s/%s", pages_url, settings.agent_id, settings.run)
    return history


def _ending(stopped: bool, committed: bool, reason: str, step: int) -> tuple[str, str]:
    """(state, message) of a run that ended without an exception."""
    if not stopped:
        state, message = "finished", f"trained to step {step}"
    elif reason == "SIGTERM":
        state = "preempted"
        message = f"SIGTERM at step {step}: checkpointed and stopped; --resume-from-checkpoint latest continues it"
    else:
        state, message = "stopped", f"stopped at step {step} by {reason or 'request'}"
    if not committed:
        message += "; the last checkpoint was not committed (resume from the one before)"
    return state, message


@contextmanager
def _recorded(history: RunHistory, board: TensorBoardLog | None) -> Iterator[None]:
    """The run's history uploads until the end; an exception is recorded as how the run ended, then raised."""
    history.start()
    try:
        yield
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        reason = str(exc) if isinstance(exc, RewindError) else f"{type(exc).__name__}: {exc}".rstrip(": ")
        history.close("stopped" if interrupted else "failed", 130 if interrupted else 1, reason)
        raise
    finally:
        if board is not None:
            board.close()


def _changed(settings: TrainSettings) -> set[str]:
    defaults = TrainSettings().to_dict()
    return {k for k, v in settings.to_dict().items() if defaults[k] != v}


def _retention(settings: TrainSettings) -> dict:
    return {"keep_last": settings.keep_last_n_checkpoints, "keep_every": settings.keep_every,
            "keep_best": settings.keep_best, "metric": "eval_return", "mode": "max"}


def _resumed_at(plan: Plan) -> int:
    return plan.resume.state["loop"]["step"] if plan.resume else -1


@contextmanager
def _trainer_service(settings: TrainSettings, servicer: service.TrainerServicer,
                     explicit: Collection[str]) -> Iterator[str]:
    """The trainer's own gRPC service (status, checkpoint-now, stop, weights) and its /metrics, unless port is
    -1; yields its address ("" when none).

    Its ports at their defaults become free ones when taken, so that two runs share a host.
    """
    if settings.port < 0:
        yield ""
        return
    host = ServiceHost.from_settings([service.binding(servicer)], settings, explicit)
    host.metrics.register(TrainerCollector(servicer))
    host.start()
    try:
        yield host.address
    finally:
        host.stop()


@contextmanager
def _at_boundaries(trainer: Trainer, hook: Callable[[Trainer], None]) -> Iterator[None]:
    """Run `hook` at each boundary of the loop (on the thread that trains), before what runs there already."""
    boundary = trainer.on_boundary

    def on_boundary(loop: Trainer) -> None:
        hook(loop)
        boundary(loop)

    trainer.on_boundary = on_boundary
    try:
        yield
    finally:
        trainer.on_boundary = boundary


@contextmanager
def _sharing_cpus(settings: TrainSettings, servicer: service.TrainerServicer, trainer: Trainer) -> Iterator[None]:
    """With its threads chosen by detection (--torch-threads 0), the run takes its share of the host's CPUs at
    each boundary, as other trainings start and end beside it (rewind_runtime/host_share.py)."""
    if settings.torch_threads:
        yield  # a count given explicitly is kept (exact resume needs the same count)
        return
    import torch

    detected = servicer.threads

    def set_threads(threads: int) -> None:
        torch.set_num_threads(threads)
        servicer.threads = detected if threads == detected.threads else ThreadChoice(
            threads, f"{detected.reason}; shared with the other trainings on this host")

    share = HostShare.join(host_share.default_folder(), detected.threads, set_threads)
    try:
        with _at_boundaries(trainer, lambda _loop: share.apply()):
            yield
    finally:
        share.leave()


@contextmanager
def _publishing(settings: TrainSettings, trainer: Trainer, weights: WeightsBoard,
                agent_config: AgentConfig) -> Iterator[None]:
    """With --publish-weights-every N, post the policy for collectors every N updates (rewind_trainer/weights.py);
    calls still waiting for weights end with the run."""
    config = dataclasses.asdict(agent_config)

    def encode() -> tuple[int, int, bytes]:
        return trainer.updates, trainer.state.step, encode_policy(trainer.agent.model.state_dict(), config)

    try:
        if not weights.enabled:
            yield
            return
        publisher = Publisher(weights, settings.weights_every, encode)
        with _at_boundaries(trainer, lambda loop: publisher.on_boundary(loop.updates)):
            yield
    finally:
        weights.close()


@contextmanager
def _signals(control: service.Control, enabled: bool) -> Iterator[None]:
    """SIGTERM and SIGINT ask the loop to checkpoint and stop (main thread only)."""
    if not enabled:
        yield
        return
    previous = {signum: signal.signal(signum, lambda num, _f: control.request_stop(signal.Signals(num).name))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def _settled(control: service.Control) -> Iterator[None]:
    """Checkpoint requests still waiting when the run ends get an answer."""
    try:
        yield
    finally:
        for waiter in control.take_checkpoint_waiters():
            if not waiter.done():
                waiter.set_exception(Internal("trainer: the run ended before the checkpoint was taken"))
