"""The online loop, top to bottom (TD-MPC2's schedule): random actions for the
seed steps, a burst of `seed_steps` updates when they end, then one update per
environment step; evaluation every `eval_freq` steps. Episodes go to the
buffer service's `buffer`, evaluation episodes to its `test_buffer`; batches
come back through the SDK's prefetching stream.

Exact resume rests on three rules:
- Every piece of state that the next step depends on lives in `LoopState`, the
  agent, the RNGs, the env and the two buffers, and is saved at a boundary.
- A boundary is a point where no batch stream is open. A stream never samples
  more batches than the loop will certainly consume before the next episode is
  added, so the buffer's sampler is in the same place however the run was cut.
- Evaluation has no side effects on training: its own env, its own seeds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from tqdm import tqdm

from rewind.buffer_client import BatchStream, BufferClient
from rewind.sharded_buffer_client import ShardedBufferClient
from rewind_trainer.agent import TDMPC2
from rewind_trainer.envs import Env, make_env
from rewind_trainer.metrics import MetricsLog
from rewind_trainer.recorder import EpisodeRecorder
from rewind_trainer.rngs import capture_rngs, restore_rngs
from rewind_trainer.settings import TrainSettings
from rewind_trainer.state import RECENT, LoopState

log = logging.getLogger(__name__)

STREAM_CHUNK = 32       # batches per stream at most: stop and checkpoint-now wait at most this many updates
STOP_LATENCY_S = 1.0    # and at most about this long: slow updates (a big model on a CPU) get shorter streams


def stream_chunk(update_s: float) -> int:
    """Batches per stream for updates that take `update_s` seconds (0: not measured yet).

    A stop waits for the open stream's updates (closing it early would leave the
    buffer's sampler ahead of the loop), so the stream holds about STOP_LATENCY_S
    of them. The chunking never changes what is sampled, only where boundaries fall.
    """
    if update_s <= 0:
        return STREAM_CHUNK
    return max(1, min(STREAM_CHUNK, int(STOP_LATENCY_S / update_s)))


def updates_done(step: int, seed_steps: int, owed: int) -> int:
    """Gradient updates the loop has made by `step`, from the loop's own bookkeeping.

    The loop owes `seed_steps` updates when the seed steps end and one per step
    after that; `owed` are those not made yet. So by step N > seed_steps it has
    owed N - 1 in all.
    """
    return max(step - 1 - owed, 0) if step > seed_steps else 0


class Stopped(Exception):
    """Raised at a boundary once a stop was asked for (SIGTERM, the Stop call)."""


class Trainer:
    """The online loop with its state, for one run.

    Args:
        settings: the run's settings (seed_steps already resolved).
        env: the training environment.
        agent: the TD-MPC2 agent.
        buffer: client of the buffer service's `buffer`, or of its shards.
        test_buffer: client of its `test_buffer` (a sharded run's first shard).
        metrics: where rows go.
        on_boundary: called at every boundary (no batch stream open); it may
            checkpoint, and raises Stopped to end the loop there.
        interrupt: once set (a stop was asked for), an evaluation in progress is abandoned.
        progress: show a progress bar.
    """

    def __init__(self, settings: TrainSettings, env: Env, agent: TDMPC2, buffer: BufferClient | ShardedBufferClient,
                 test_buffer: BufferClient, metrics: MetricsLog, *,
                 on_boundary: Callable[[Trainer], None] | None = None, interrupt: threading.Event | None = None,
                 progress: bool = True) -> None:
        self.settings = settings
        self.env, self.agent = env, agent
        self.buffer, self.test_buffer = buffer, test_buffer
        self.metrics = metrics
        self.on_boundary = on_boundary or (lambda trainer: None)
        self.progress = progress
        self.state = LoopState()
        self.recorder = EpisodeRecorder()
        self.obs: torch.Tensor | None = None
        self.random_actions = torch.Generator().manual_seed(settings.seed)
        self.phase = "starting"
        self.interrupt = interrupt or threading.Event()
        self._stream: BatchStream | None = None
        self._stream_left = 0
        self._started = time.perf_counter()
        self._steps_at_start = 0
        self._evaluating_s = 0.0  # seconds spent evaluating since the start, left out of the rate
        self._update_s = 0.0  # a moving average of one update's seconds, which sizes the streams

    @contextmanager
    def phase_of(self, name: str) -> Iterator[None]:
        """Report `name` as the phase (in the status) while the block runs."""
        previous, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = previous

    @property
    def seed_steps(self) -> int:
        return self.settings.seed_steps

    @property
    def updates(self) -> int:
        """Gradient updates made so far (restored with the loop's state on resume)."""
        return updates_done(self.state.step, self.seed_steps, self.state.owed)

    @property
    def steps_per_second(self) -> float:
        """Training's rate since the start (or resume): evaluation time does not count."""
        elapsed = time.perf_counter() - self._started - self._evaluating_s
        return (self.state.step - self._steps_at_start) / elapsed if elapsed > 0 else 0.0

    @property
    def eval_summary(self) -> str:
        """The last evaluation return and the step it is from ("n/a" before the first)."""
        s = self.state
        return "n/a" if s.last_eval_step < 0 else f"{s.eval_return:.1f} at step {s.last_eval_step}"

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Train to settings.steps; raises Stopped when asked to stop at a boundary."""
        s = self.state
        bar = self._start_bar(self.agent.mode)
        try:
            while True:
                if self._stream is None:
                    self.on_boundary(self)
                if s.owed:
                    self._update()
                elif s.unadded:
                    self._finish_episode(bar)
                elif s.step >= self.settings.steps:
                    break
                else:
                    evaluated = self._evaluating_s
                    self._env_step()
                    if self._evaluating_s != evaluated:
                        bar.unpause()  # the bar's rate and time left count training only, as steps_per_second does
                        self._show(bar)
                    bar.update(1)
        finally:
            bar.close()
            self._close_stream()
        self.phase = "done"

    def _start_bar(self, label: str) -> tqdm:
        """Start the rate's clock at the current step, and the progress bar (labelled `label`) from it."""
        self._started, self._steps_at_start = time.perf_counter(), self.state.step
        return tqdm(total=self.settings.steps, initial=self.state.step, disable=not self.progress, unit="step",
                    desc=f"{self.settings.task} ({label})", dynamic_ncols=True)

    def _env_step(self) -> None:
        s = self.state
        # Not again at a step already evaluated: a run resumed from its final checkpoint with more steps has
        # the final evaluation of that step in the checkpoint.
        if s.step % self.settings.eval_freq == 0 and (s.step or self.settings.eval_at_start) \
                and s.last_eval_step != s.step:
            s.eval_next = True
        if s.done:
            if s.eval_next and self.settings.eval_episodes and not self._evaluate():
                return  # abandoned for a stop: the next boundary stops, and the resumed run evaluates here again
            s.eval_next = False
            self.obs = self.env.reset()
            self.recorder.start(self.obs, self.env.action_dim)
            s.done, s.episode_start = False, s.step
        if s.step > self.seed_steps:
            self.phase = "training"
            action = self.agent.act(self.obs, t0=self.recorder.steps == 0)
        else:
            self.phase = "seeding"
            action = self.env.random_action(self.random_actions)
        self.obs, reward, terminated, truncated = self.env.step(action)
        self.recorder.record(self.obs, action, reward, terminated)
        s.done = s.unadded = terminated or truncated
        if s.step >= self.seed_steps:
            s.owed += self.seed_steps if s.step == self.seed_steps else 1  # the burst when the seed steps end
        s.step += 1

    def _update(self) -> None:
        s = self.state
        batch = self._next_batch()
        started = time.perf_counter()
        s.losses = self.agent.update(*batch)
        took = time.perf_counter() - started
        self._update_s = took if not self._update_s else 0.8 * self._update_s + 0.2 * took
        s.owed -= 1

    def _finish_episode(self, bar: tqdm) -> None:
        s = self.state
        self.buffer.add(self.recorder.tensors())
        s.episode += 1
        s.unadded = False
        s.episode_return = self.recorder.episode_return
        s.recent_returns = (s.recent_returns + [s.episode_return])[-RECENT:]
        self.metrics.write(step=s.step, episode=s.episode, kind="train", episode_return=s.episode_return,
                           episode_steps=self.recorder.steps, steps_per_s=self.steps_per_second, **s.losses)
        self._show(bar)

    def _show(self, bar: tqdm) -> None:
        bar.set_postfix(ret=f"{self.state.episode_return:.1f}", eval=self.eval_summary,
                        sps=f"{self.steps_per_second:.1f}")

    # -- batches -------------------------------------------------------------

    def _next_batch(self):
        if self._stream is None:
            n = self._stream_size()
            self._stream = self.buffer.batches(prefetch=min(self.settings.prefetch, n), num_batches=n)
            self._stream_left = n
        batch = next(self._stream)
        self._stream_left -= 1
        if self._stream_left == 0:
            self._close_stream()
        return batch

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _stream_size(self) -> int:
        """Updates certain to run before the next episode is added (or a planned checkpoint), at most stream_chunk().

        Only fixed-length episodes let us look past the current step: an
        episode that may terminate early could leave sampled batches unused.
        """
        s = self.state
        n, chunk = s.owed, stream_chunk(self._update_s)
        if s.unadded or not self.env.fixed_length:
            return min(n, chunk)
        end = min(s.episode_start + self.env.episode_length, self.settings.steps)
        every = self.settings.checkpoint_interval_steps
        if every:
            # a step-interval checkpoint falls due once the updates of the step reaching a multiple are paid
            end = min(end, (s.step // every + 1) * every)
        for t in range(s.step, end):
            if n >= chunk:
                break
            if t >= self.seed_steps:
                n += self.seed_steps if t == self.seed_steps else 1
        return min(n, chunk)

    # -- evaluation ----------------------------------------------------------

    def _evaluate(self) -> bool:
        """Mean return of eval episodes, on an env and generators of their own.

        Training's env, agent generator and torch's global generator are left
        as they were, so evaluating (or being stopped mid-way) changes nothing
        that training depends on. Episodes go to test_buffer only once all ran.

        Returns:
            False when a stop abandoned it: nothing of it was kept.
        """
        started = time.perf_counter()
        try:
            return self._evaluate_episodes()
        finally:
            self._evaluating_s += time.perf_counter() - started

    def _evaluate_episodes(self) -> bool:
        s, cfg = self.state, self.settings
        self.phase = "evaluating"
        eval_seed = cfg.seed + 100_003 * (s.evaluations + 1)
        env = make_env(cfg.task, eval_seed, cfg.action_repeat)
        episodes, returns = [], []
        with torch.random.fork_rng(devices=[]), self.agent.own_generator(eval_seed):
            for _ in range(cfg.eval_episodes):
                recorder = EpisodeRecorder()
                obs, done = env.reset(), False
                recorder.start(obs, env.action_dim)
                while not done:
                    if self.interrupt.is_set():
                        log.info("evaluation at step %d abandoned: stopping; it reruns on resume", s.step)
                        env.close()
                        return False
                    action = self.agent.act(obs, t0=recorder.steps == 0, eval_mode=True)
                    obs, reward, terminated, truncated = env.step(action)
                    recorder.record(obs, action, reward, terminated)
                    done = terminated or truncated
                episodes.append(recorder.tensors())
                returns.append(recorder.episode_return)
        env.close()
        for episode in episodes:
            self.test_buffer.add(episode)
        s.test_episodes += len(episodes)
        s.evaluations += 1
        s.last_eval_step = s.step
        s.eval_return = sum(returns) / len(returns)
        self.metrics.write(step=s.step, episode=s.episode, kind="eval", episode_return=s.eval_return,
                           episode_steps=env.episode_length)
        return True

    def final_evaluation(self) -> float:
        """Evaluate at the end of the run unless the last evaluation was at this step."""
        if self.settings.eval_episodes and self.state.last_eval_step != self.state.step:
            self._evaluate()
        return self.state.eval_return

    # -- state ---------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything to continue bit-identically, copied (safe to serialise in the background)."""
        s = self.state
        return {
            "loop": {k: v for k, v in s.__dict__.items() if k not in ("recent_returns", "losses")}
            | {"recent_returns": list(s.recent_returns), "losses": dict(s.losses)},
            "recorder": self.recorder.state_dict(),
            "obs": None if self.obs is None else self.obs.clone(),
            "agent": self.agent.state_dict(),
            "rngs": capture_rngs() | {"random_actions": self.random_actions.get_state()},
            "env_json": json.dumps(self.env.get_state()),
            # A sharded replay's split generator and episode index: where the next batch's shares and the
            # next episode's shard come from.
            "replay": self.buffer.state_dict() if isinstance(self.buffer, ShardedBufferClient) else None,
        }

    def load_state_dict(self, state: dict) -> None:
        loop = dict(state["loop"])
        self.state = LoopState(**loop)
        self.recorder.load(state["recorder"])
        self.obs = state["obs"]
        self.agent.load_state_dict(state["agent"])
        restore_rngs(state["rngs"])
        self.random_actions.set_state(state["rngs"]["random_actions"])
        self.env.set_state(json.loads(state["env_json"]))
        if state.get("replay") is not None:
            self.buffer.load_state_dict(state["replay"])
