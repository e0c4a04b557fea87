"""The learner: the loop of a run whose episodes come from collectors (`rewind train --collectors M`).

It only updates and evaluates. Its pace comes from the shards' rate limiters: each shard is made with
Reverb's SampleToInsertRatio, `samples_per_insert = batch_size x updates_per_step`, so that a batch
of B sequences goes out for every `1 / updates_per_step` transitions the collectors bring in (TD-MPC2's
one update per environment step). A batch the limiter holds back waits on the shard; a wait longer than
the client's timeout ends the stream with RATE_LIMITED, and the learner opens another, for as long as
it takes, counting the waits.

Its step is what the collectors brought: it goes on by the environment steps the shards take in, as
their limiters count them (a shard restored from a cut lost some, which were collected all the same).
Checkpoints, evaluations and the end of the run follow that step as they follow the single-process
loop's. Across collectors, exactness is statistical: the learner resumes from its last cut with the
shards as they were then, and the collectors go on from there.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

from rewind.buffer_client import BufferClient
from rewind.errors import DeadlineExceeded, FailedPrecondition, RewindError
from rewind.sharded_buffer_client import LIVE, ShardedBufferClient, merge_writers, rate_limited
from rewind_trainer.connections import WRITER
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.loop import STREAM_CHUNK, Trainer, stream_chunk
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5   # how long the learner waits (for episodes, for its limiters) before it looks again


def shard_limiter(cfg: AgentConfig, settings: TrainSettings, episode_length: int) -> dict[str, float | int | str]:
    """Each shard's rate limiter in a learner's run, as the settings of its buffer.

    Units are the limiter's: an insert is one stored row (an episode of L steps stores L + 1), a sample
    one sequence. The window [0, high] lets the learner take every batch its ratio allows the moment the
    collectors bring the transitions (so the first `seed_steps` come as TD-MPC2's burst of updates), and
    lets each collector be about one episode ahead on each shard before its inserts wait for the learner,
    besides min_size_to_sample: below it inserts always go in, so the window must hold it (Reverb's offset),
    and a learner that is behind lags its collectors by that much too.
    """
    shards = settings.shard_count
    spi = cfg.batch_size * settings.updates_per_step
    longest = episode_length + 1
    min_size = max(longest, math.ceil(settings.seed_steps / shards))
    ahead = max(1, math.ceil(max(settings.collectors, 1) / shards)) + 1  # episodes in flight per shard
    high = spi * (min_size + longest * ahead) + cfg.batch_size
    return {"samples_per_insert": spi, "min_size_to_sample": min_size, "error_buffer": f"0,{high:g}",
            "inserts_wait": True, "max_episode_length": longest}


def _batches_allowed(stats) -> int:
    """Whole batches the buffer's rate limiter would let through now (STREAM_CHUNK: it has none)."""
    if not stats.HasField("rate_limiter"):
        return STREAM_CHUNK
    limiter = stats.rate_limiter
    if not limiter.can_sample:
        return 0
    room = limiter.inserts * limiter.samples_per_insert - limiter.samples - limiter.min_diff
    return int(min(room // max(stats.settings.batch_size, 1), STREAM_CHUNK))


class Learner(Trainer):
    """The loop of a learner: updates while the shards' limiters allow, evaluates every eval_freq collected steps.

    Args (besides Trainer's):
        shards: a client of each shard's `buffer`, whose stats count the collected steps.
    """

    def __init__(self, *args, shards: Sequence[BufferClient], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.shards = list(shards)
        self.learned = 0              # gradient updates made (restored on resume): the policy's version
        self.limiter_retries = 0      # streams the limiter ended (RATE_LIMITED), each opened again
        self.batch_wait_s = 0.0       # seconds spent waiting for batches (the limiter, the shards)
        self._sampleable = 0
        self._allowed = 0             # batches every shard's limiter lets through now (a full batch each)
        # Per shard: the (steps, episodes) it said it took in when last asked, since this process started.
        self._taken: dict[str, tuple[int, int]] = {}
        self.policy_lags: dict[str, int] = {}   # per collector, as of the last boundary

    @property
    def updates(self) -> int:
        return self.learned

    def run(self) -> None:
        """Learn until the collectors brought settings.steps steps; raises Stopped when asked to stop."""
        s = self.state
        bar = self._start_bar("learner")
        try:
            while True:
                if self._stream is None:
                    self._count_collected()
                    bar.update(s.step - bar.n)
                    self._show(bar)
                    self.on_boundary(self)
                    if s.step >= self.settings.steps:
                        break
                    if self._evaluation_due():
                        self._evaluate()  # abandoned for a stop: the next boundary stops
                        continue
                    if not (self._sampleable and self._allowed):
                        # Waiting here, not in a held-back stream, keeps the counts (and a stop) current.
                        self.phase = "waiting for collectors"
                        self.interrupt.wait(IDLE_WAIT_S)
                        continue
                self.phase = "learning"
                self._learn()
        finally:
            bar.close()
            self._close_stream()
        self.phase = "done"

    def _learn(self) -> None:
        """One update, or a stream given up to the limiter (opened again at the next turn)."""
        started = time.perf_counter()
        try:
            batch = self._next_batch()
        except (DeadlineExceeded, FailedPrecondition) as exc:
            self._close_stream()
            self.batch_wait_s += time.perf_counter() - started
            if isinstance(exc, FailedPrecondition) and "no shard holds an episode" not in exc.message:
                raise
            if rate_limited(exc):
                self.limiter_retries += 1
                log.info("the rate limiter held batches back for a while (the collectors are behind); waiting on")
            return
        self.batch_wait_s += time.perf_counter() - started
        began = time.perf_counter()
        self.state.losses = self.agent.update(*batch)
        took = time.perf_counter() - began
        self._update_s = took if not self._update_s else 0.8 * self._update_s + 0.2 * took
        self.learned += 1

    def _stream_size(self) -> int:
        return max(1, min(stream_chunk(self._update_s), self._allowed))

    def _count_collected(self) -> None:
        """The step and episode counts go on by what the live shards took in since the last look, and the batches
        their limiters let through now are noted. A lost shard (or one not yet restored) is not asked."""
        every, allowed = [], STREAM_CHUNK
        steps = episodes = 0
        for shard in self.shards:
            if not self._live(shard):
                continue
            try:
                stats = shard.stats(timeout=5.0)
            except RewindError:
                continue  # lost meanwhile: the sharded client's stream finds out and drops it
            every.append(stats)
            if stats.sampleable_episodes:
                allowed = min(allowed, _batches_allowed(stats))
            inserts = stats.rate_limiter.inserts if stats.HasField("rate_limiter") else stats.transitions
            # Each episode stores its first observation besides its steps.
            now = (inserts - stats.episodes_added, stats.episodes_added)
            # What the shard took in since it was last asked. A shard restored from a cut counts less than
            # before: the episodes it lost were collected all the same, and the count goes on from there.
            before = self._taken.get(shard.address, now)
            steps, episodes = steps + max(now[0] - before[0], 0), episodes + max(now[1] - before[1], 0)
            self._taken[shard.address] = now
        s = self.state
        s.step, s.episode = s.step + steps, s.episode + episodes
        if episodes:
            # The learner sees no episode's return (the collectors log theirs): a row of its losses.
            self.metrics.write(step=s.step, episode=s.episode, kind="train", steps_per_s=self.steps_per_second,
                               **s.losses)
        self._sampleable = sum(stats.sampleable_episodes for stats in every)
        self._allowed = allowed if every else 0
        # Each collector's lag: the updates since the policy its latest stored episode was acted with.
        self.policy_lags = {w.writer: self.learned - w.latest_policy_version for w in merge_writers(every)
                            if w.writer and w.writer != WRITER}

    def _live(self, shard: BufferClient) -> bool:
        """Whether the shard is sampled now (a sharded replay drops a lost shard until it is restored)."""
        replay = self.buffer
        return not isinstance(replay, ShardedBufferClient) or replay.shard(shard.address).state == LIVE

    def _evaluation_due(self) -> bool:
        s, cfg = self.state, self.settings
        if not cfg.eval_episodes or s.last_eval_step == s.step:
            return False
        if s.last_eval_step < 0:
            return cfg.eval_at_start or s.step >= cfg.eval_freq
        return s.step // cfg.eval_freq > s.last_eval_step // cfg.eval_freq

    def state_dict(self) -> dict:
        return super().state_dict() | {"learner": {"updates": self.learned, "limiter_retries": self.limiter_retries}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        learner = state.get("learner") or {}
        self.learned = int(learner.get("updates", 0))
        self.limiter_retries = int(learner.get("limiter_retries", 0))
