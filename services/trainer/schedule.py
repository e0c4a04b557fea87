"""CheckpointSchedule: at each boundary of the loop, whether to checkpoint (an
interval is due, or someone asked) or to stop; and the checkpoint on the way out.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

from rewind.errors import RewindError
from rewind_trainer.checkpointer import Checkpointer, SaveJob
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.loop import Stopped, Trainer
from rewind_trainer.service import Control

log = logging.getLogger(__name__)


class CheckpointSchedule:
    """Decides, at each boundary, whether to checkpoint (interval, request) or stop.

    Args:
        checkpointer: saves in the background.
        control: stop and checkpoint-now requests.
        agent_cfg: recorded in every checkpoint.
        history: the overrides of every resume so far, recorded in every checkpoint.
    """

    def __init__(self, checkpointer: Checkpointer, control: Control, agent_cfg: AgentConfig, history: list) -> None:
        self.checkpointer, self.control = checkpointer, control
        self.agent_cfg = agent_cfg
        self.history = history
        self.mark: tuple[int, int] | None = None  # (step, episode) where the last checkpoint was started
        self.start_step = 0  # the step the loop started (or resumed) at
        self.job: SaveJob | None = None
        self._updates_at_cut = 0  # the loop's updates when the last checkpoint was started

    def _due(self, trainer: Trainer) -> bool:
        s, cfg = trainer.state, trainer.settings
        if s.owed:
            return False  # a periodic checkpoint at step N holds N steps and their updates
        by_steps = cfg.checkpoint_interval_steps and s.step // cfg.checkpoint_interval_steps > \
            self.mark[0] // cfg.checkpoint_interval_steps
        by_episodes = cfg.checkpoint_interval_episodes and s.episode // cfg.checkpoint_interval_episodes > \
            self.mark[1] // cfg.checkpoint_interval_episodes
        return bool(by_steps or by_episodes)

    def on_boundary(self, trainer: Trainer) -> None:
        """The loop's boundary hook: raise Stopped, start a checkpoint, or let the loop go on."""
        if self.mark is None:
            self.mark = (trainer.state.step, trainer.state.episode)  # the start (or the resumed step)
            self.start_step, self._updates_at_cut = trainer.state.step, trainer.updates
        if self.control.stopping.is_set():
            raise Stopped
        waiters = self.control.take_checkpoint_waiters()
        if trainer.state.step >= trainer.settings.steps:
            # The last step: the episode ending there is yet to be added and the final evaluation to run.
            # final_checkpoint saves the step after them, so that its record (and "best") has the final
            # figures, and answers the requests then.
            self._give_back(waiters)
            return
        # Nothing new since the start (a resumed step is already a checkpoint): requests wait for the next boundary.
        if not (waiters or self._due(trainer)) or trainer.state.step == self.start_step:
            self._give_back(waiters)
            return
        job = self.job
        if job is not None and job.step == trainer.state.step and not (job.done.done() and job.done.exception()):
            self._chain(job, waiters)  # already saving (or saved) this very step
            return
        if self.checkpointer.busy:
            self._give_back(waiters)  # the previous upload is still running: try at the next boundary
            return
        self._start(trainer, waiters)

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

    def _start(self, trainer: Trainer, waiters: list) -> SaveJob | None:
        s, settings = trainer.state, trainer.settings
        metrics = {k: float(v) for k, v in (("eval_return", s.eval_return), ("episode_return", s.episode_return))
                   if not math.isnan(v)}
        config = {"settings": settings.to_dict(), "agent_config": dataclasses.asdict(self.agent_cfg)}
        # policy_version: the version GetWeights gave this policy (the update count), for a collector's fallback.
        extra = {"overrides": self.history, "acting_mode": trainer.agent.mode, "recent_returns": s.recent_returns,
                 "policy_version": trainer.updates}

        def state() -> dict:
            return {**trainer.state_dict(), **config, "overrides": self.history}

        self.mark = (s.step, s.episode)
        # The buffers must have seen what the loop added, no more; a learner's collectors add on meanwhile.
        expected = {"buffer": s.episode, "test_buffer": s.test_episodes} if not settings.collectors else {}
        try:
            with trainer.phase_of("checkpointing"):
                self.job = self.checkpointer.start(s.step, s.episode, state, expected, metrics, config, extra)
                self._updates_at_cut = trainer.updates
        except RewindError as exc:
            log.warning("checkpoint at step %d not started: %s; the next interval retries", s.step, exc)
            self.checkpointer.report_error(str(exc))
            for waiter in waiters:
                waiter.set_exception(exc)
            return None
        self._chain(self.job, waiters)
        return self.job

    def final_checkpoint(self, trainer: Trainer, deadline: float | None) -> bool:
        """Checkpoint the current step (unless already saved) and wait for it; True once committed."""
        s = trainer.state
        try:
            self.checkpointer.wait(timeout=_remaining(deadline))  # an upload still in flight first
        except TimeoutError:
            log.error("the checkpoint in flight did not commit within the grace time; the last committed is %s",
                      self.checkpointer.status.path or "none")
            return False
        if self.checkpointer.status.step == s.step and not self.checkpointer.status.error:
            if trainer.updates != self._updates_at_cut:
                # A learner's step moves only with the collectors' episodes, and a checkpoint is named by its step.
                log.warning("%d updates since the checkpoint at step %d are not saved: no episode came in since, "
                            "and that step is committed", trainer.updates - self._updates_at_cut, s.step)
            return True
        job = self._start(trainer, self.control.take_checkpoint_waiters())
        if job is None:
            return False
        try:
            job.done.result(timeout=_remaining(deadline))
        except TimeoutError:
            log.error("checkpoint at step %d did not commit within the grace time; the last committed is %s",
                      s.step, self.checkpointer.status.path or "none")
            return False
        except Exception as exc:  # already logged by the checkpointer
            log.error("the final checkpoint at step %d failed: %s", s.step, exc)
            return False
        return True


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)
