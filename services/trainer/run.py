"""train(): one run of the trainer, from connecting to the services to the
final checkpoint.

    result = train(TrainSettings(task="Pendulum-v1", steps=8000))
    print(result.eval_return, result.checkpoint)

Order matters for "nothing is lost": every check (services reachable, the
checkpoint readable and fitting, the buffers empty for a fresh run) happens
before the first thing is written.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rewind.buffer_client import BufferClient
from rewind.checkpoint_client import CheckpointClient
from rewind.errors import FailedPrecondition, Internal, InvalidArgument, NotFound, RewindError, Unavailable
from rewind.local_service import LocalService
from rewind.serving import ServiceHost
from rewind_trainer import service
from rewind_trainer.agent import TDMPC2
from rewind_trainer.checkpointer import TRAINER_FILE, Checkpointer, SaveJob, decode_trainer_state
from rewind_trainer.envs import make_env
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.loop import MetricsLog, Stopped, Trainer, check_buffer
from rewind_trainer.plot import plot_learning_curve
from rewind_trainer.resume import check_agent_config, merge_settings
from rewind_trainer.settings import TrainSettings

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


def _reach(client, what: str, timeout_s: float) -> None:
    try:
        client.wait_until_serving(timeout=timeout_s)
    except RewindError as exc:
        raise Unavailable(f"{what} at {client.address} is not reachable ({exc}); start it, or pass "
                          f"--{what.split()[0]}-address host:port") from None


def _check_fresh(ckpt: CheckpointClient, buffers: list[BufferClient], settings: TrainSettings) -> None:
    """A fresh run must not write over another run's checkpoints, nor learn from its episodes."""
    try:
        existing = ckpt.list(settings.agent_id, settings.run)
    except NotFound:
        existing = []
    if existing:
        raise FailedPrecondition(
            f"run_id: {settings.agent_id}/{settings.run} already has checkpoints (latest step {existing[-1].step}); "
            "continue it with --resume-from-checkpoint latest, or start another with --run-id NAME")
    for buffer in buffers:
        stats = buffer.stats()
        if stats.episodes:
            raise FailedPrecondition(
                f"buffer service at {buffer.address}: buffer {buffer.buffer!r} already holds {stats.episodes} "
                "episodes; a fresh run needs empty buffers: restart the buffer service, or resume the run "
                "they belong to with --resume-from-checkpoint")


@contextmanager
def local_services(settings: TrainSettings, store: str) -> Iterator[TrainSettings]:
    """Start a buffer and a checkpoint service on free loopback ports for this run; stop them after.

    The buffer samples what the agent learns from: its batch size and horizon.
    """
    agent = AgentConfig(obs_dim=1, action_dim=1, model_size=settings.model_size, **settings.agent)
    log.info("starting a buffer service and a checkpoint service (store %s)", store)
    buffer = LocalService(["buffer", "serve", "--batch-size", str(agent.batch_size), "--horizon",
                           str(agent.horizon), "--min-history", "0"])
    try:
        with LocalService(["ckpt", "serve", "--store", store]) as ckpt:
            yield settings.replace(buffer_address=buffer.address, checkpoint_address=ckpt.address)
            ckpt.terminate(timeout=60)
    finally:
        buffer.terminate(timeout=60) if buffer.proc.poll() is None else buffer.kill()


def resolve(settings: TrainSettings, explicit: set[str], ckpt: CheckpointClient):
    """(settings, the checkpoint's state or None, its path, overrides) for `resume_from_checkpoint`."""
    which = settings.resume_from_checkpoint
    if not which:
        return settings, None, "", {}
    try:
        if which in ("latest", "best"):
            found = ckpt.lookup(settings.agent_id, settings.run, which, metric="eval_return", mode="max")
        else:
            found = ckpt.lookup(which=which)
    except NotFound as exc:
        if which != "latest":
            raise
        log.info("no checkpoint of %s/%s yet (%s): starting fresh", settings.agent_id, settings.run, exc)
        return settings, None, "", {}
    for path, reason in found.skipped:
        log.warning("skipped checkpoint %s: %s", path, reason)
    where = found.checkpoint.path
    state = decode_trainer_state(ckpt.read(where, TRAINER_FILE), where)
    merged, overrides = merge_settings(state["settings"], settings, explicit, where)
    return merged, state, where, overrides


def train(settings: TrainSettings, *, explicit: set[str] | None = None, progress: bool = True,
          handle_signals: bool = False, control: service.Control | None = None) -> TrainResult:
    """Run (or resume) training.

    Args:
        settings: what to run; see TrainSettings.
        explicit: names of the settings the user gave (default: those that
            differ from the defaults). On resume only these override the checkpoint.
        progress: show a progress bar.
        handle_signals: SIGTERM and SIGINT checkpoint and stop (main thread only).
        control: requests from outside (tests); a trainer service gets the same one.

    Raises:
        InvalidArgument: bad settings or an unknown task.
        Unavailable: a service cannot be reached (named with its address).
        NotFound, DataLoss, FailedPrecondition: the checkpoint to resume from
            is missing, corrupt or does not fit (nothing is written then).
    """
    if explicit is None:
        defaults = TrainSettings().to_dict()
        explicit = {k for k, v in settings.to_dict().items() if defaults[k] != v}
    control = control or service.Control()
    if "task" in explicit or not settings.resume_from_checkpoint:
        make_env(settings.task, settings.seed, settings.action_repeat).close()  # an unknown task fails first
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    buffer = BufferClient(settings.buffer_address, "buffer")
    test_buffer = buffer.using("test_buffer")
    ckpt = CheckpointClient(settings.checkpoint_address)
    host: ServiceHost | None = None
    previous_handlers = {}
    try:
        _reach(buffer, "buffer service", settings.wait_for_services_s)
        _reach(ckpt, "checkpoint service", settings.wait_for_services_s)
        settings, saved, resumed_from, overrides = resolve(settings, explicit, ckpt)

        env = make_env(settings.task, settings.seed, settings.action_repeat)
        settings = settings.replace(seed_steps=settings.seed_steps or max(1000, 5 * env.episode_length))
        if settings.seed_steps < env.episode_length < settings.steps:
            raise InvalidArgument(f"seed_steps: {settings.seed_steps} is shorter than one episode of {settings.task} "
                                  f"({env.episode_length} steps); learning starts from stored episodes")
        agent_cfg = AgentConfig(obs_dim=env.obs_dim, action_dim=env.action_dim, episode_length=env.episode_length,
                                model_size=settings.model_size, mpc=settings.mpc, lr=settings.learning_rate,
                                **settings.agent)
        if saved is not None:
            check_agent_config(saved["agent_config"], agent_cfg, resumed_from)
        agent = TDMPC2(agent_cfg, seed=settings.seed, device=settings.device)
        run_dir = Path(settings.out_dir) / settings.agent_id / settings.run

        if saved is None:
            _check_fresh(ckpt, [buffer, test_buffer], settings)
        else:
            ckpt.restore_buffers(resumed_from, [(buffer.address, "buffer"), (buffer.address, "test_buffer")])
        check_buffer(buffer, agent_cfg, settings.seed_steps)

        metrics = MetricsLog(run_dir)
        trainer = Trainer(settings, env, agent, buffer, test_buffer, metrics, progress=progress)
        history = list(saved.get("overrides", [])) if saved is not None else []
        if saved is not None:
            trainer.load_state_dict(saved)
            agent.set_lr(settings.learning_rate)  # the optimisers' saved state carries the old rate
            metrics.truncate_after(trainer.state.step)
            if overrides:
                history.append({"step": trainer.state.step, "changes": overrides})
                log.info("resuming %s at step %d with overrides: %s", resumed_from, trainer.state.step,
                         ", ".join(f"{k} {v['from']} -> {v['to']}" for k, v in overrides.items()))
            else:
                log.info("resuming %s at step %d", resumed_from, trainer.state.step)

        retention = {"keep_last": settings.keep_last_n_checkpoints, "keep_every": settings.keep_every,
                     "keep_best": settings.keep_best, "metric": "eval_return", "mode": "max"}
        checkpointer = Checkpointer(ckpt, settings.agent_id, settings.run, buffer, test_buffer, retention,
                                    resumed_from)
        if saved is not None:
            checkpointer.status.path, checkpointer.status.step = resumed_from, trainer.state.step
        control.trainer, control.checkpointer = trainer, checkpointer
        control.agent_id, control.run_id, control.resumed_from = settings.agent_id, settings.run, resumed_from
        if settings.port >= 0:
            host = ServiceHost([service.binding(control)], host=settings.host, port=settings.port, grace_s=1.0)
            host.start()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous_handlers[signum] = signal.signal(
                    signum, lambda num, _f: control.request_stop(signal.Signals(num).name))

        schedule = CheckpointSchedule(trainer, checkpointer, control, agent_cfg, history)
        trainer.on_boundary = schedule.on_boundary
        stopped = False
        try:
            trainer.run()
        except Stopped:
            stopped = True
        exit_code = 0
        if stopped:
            log.info("stopping at step %d (%s)", trainer.state.step, control.stop_reason)
            ok = schedule.final_checkpoint(deadline=control.stop_deadline(settings.stop_grace_s))
            exit_code = settings.preempt_exit_code if ok else 1
        else:
            trainer.final_evaluation()
            ok = schedule.final_checkpoint(deadline=None)
            exit_code = 0 if ok else 1
        plot_learning_curve(metrics.path, f"{settings.task}, {agent.mode}, seed {settings.seed}",
                            settings.action_repeat)
        return TrainResult(settings, trainer.state.step, trainer.state.episode, trainer.state.eval_return, stopped,
                           checkpointer.status.path, resumed_from, run_dir, agent, exit_code)
    finally:
        for waiter in control.take_checkpoint_waiters():
            if not waiter.done():
                waiter.set_exception(Internal("trainer: the run ended before the checkpoint was taken"))
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        if host is not None:
            host.stop(grace_s=1.0)
        buffer.close()
        test_buffer.close()
        ckpt.close()


class CheckpointSchedule:
    """Decides, at each boundary, whether to checkpoint (interval, request) or stop."""

    def __init__(self, trainer: Trainer, checkpointer: Checkpointer, control: service.Control,
                 agent_cfg: AgentConfig, history: list) -> None:
        self.trainer, self.checkpointer, self.control = trainer, checkpointer, control
        self.agent_cfg = agent_cfg
        self.history = history
        self.mark = (trainer.state.step, trainer.state.episode)  # where the last checkpoint was started
        self.job: SaveJob | None = None

    def _due(self) -> bool:
        s, cfg = self.trainer.state, self.trainer.settings
        if s.owed:
            return False  # a periodic checkpoint at step N holds N steps and their updates
        by_steps = cfg.checkpoint_interval_steps and s.step // cfg.checkpoint_interval_steps > \
            self.mark[0] // cfg.checkpoint_interval_steps
        by_episodes = cfg.checkpoint_interval_episodes and s.episode // cfg.checkpoint_interval_episodes > \
            self.mark[1] // cfg.checkpoint_interval_episodes
        return bool(by_steps or by_episodes)

    def on_boundary(self, trainer: Trainer) -> None:
        if self.control.stopping.is_set():
            raise Stopped
        waiters = self.control.take_checkpoint_waiters()
        if not (waiters or self._due()) or trainer.state.step == 0:
            self._give_back(waiters)
            return
        job = self.job
        if job is not None and job.step == trainer.state.step and not (job.done.done() and job.done.exception()):
            self._chain(job, waiters)  # already saving (or saved) this very step
            return
        if self.checkpointer.busy:
            self._give_back(waiters)  # the previous upload is still running: try at the next boundary
            return
        self._start(waiters)

    def _give_back(self, waiters: list) -> None:
        if waiters:
            self.control.return_checkpoint_waiters(waiters)

    def _chain(self, job: SaveJob, waiters: list) -> None:
        def settle(done) -> None:
            for waiter in waiters:
                if done.exception() is not None:
                    waiter.set_exception(done.exception())
                else:
                    waiter.set_result((job.step, done.result()))

        if waiters:
            job.done.add_done_callback(settle)

    def _start(self, waiters: list) -> SaveJob | None:
        trainer, s = self.trainer, self.trainer.state
        settings = trainer.settings
        phase, trainer.phase = trainer.phase, "checkpointing"
        metrics = {k: float(v) for k, v in (("eval_return", s.eval_return), ("episode_return", s.episode_return))
                   if not math.isnan(v)}
        config = {"settings": settings.to_dict(), "agent_config": dataclasses.asdict(self.agent_cfg)}
        extra = {"overrides": self.history, "acting_mode": trainer.agent.mode, "recent_returns": s.recent_returns}

        def state() -> dict:
            return {**trainer.state_dict(), **config, "overrides": self.history}

        self.mark = (s.step, s.episode)
        try:
            self.job = self.checkpointer.start(s.step, s.episode, state,
                                               {"buffer": s.episode, "test_buffer": s.test_episodes},
                                               metrics, config, extra)
        except RewindError as exc:
            log.warning("checkpoint at step %d not started: %s; the next interval retries", s.step, exc)
            self.checkpointer.status.error = str(exc)
            for waiter in waiters:
                waiter.set_exception(exc)
            return None
        finally:
            trainer.phase = phase
        self._chain(self.job, waiters)
        return self.job

    def final_checkpoint(self, deadline: float | None) -> bool:
        """Checkpoint the current step (unless already saved) and wait for it; True once committed."""
        s = self.trainer.state
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            self.checkpointer.wait(timeout=remaining)  # an upload still in flight first
        except TimeoutError:
            log.error("the checkpoint in flight did not commit within the grace time; the last committed is %s",
                      self.checkpointer.status.path or "none")
            return False
        if self.checkpointer.status.step == s.step and not self.checkpointer.status.error:
            return True
        job = self._start(self.control.take_checkpoint_waiters())
        if job is None:
            return False
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            job.done.result(timeout=remaining)
        except TimeoutError:
            log.error("checkpoint at step %d did not commit within the grace time; the last committed is %s",
                      s.step, self.checkpointer.status.path or "none")
            return False
        except Exception as exc:  # noqa: BLE001 - already logged by the checkpointer
            log.error("the final checkpoint at step %d failed: %s", s.step, exc)
            return False
        return True

