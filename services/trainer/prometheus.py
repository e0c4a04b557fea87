"""The trainer's Prometheus metrics, read from the loop and the checkpointer at scrape time.

Every sample carries the run's `agent_id` and `run_id` labels.

    rewind_trainer_step                        agent steps taken (environment steps: x action_repeat)
    rewind_trainer_env_steps                   environment steps taken
    rewind_trainer_episodes                    training episodes finished
    rewind_trainer_steps_per_second            agent steps per second since the start (or resume), without evaluation
    rewind_trainer_updates_total               gradient updates since the run began (one per step after seeding)
    rewind_trainer_updates_per_second          updates per second since this process started training
    rewind_trainer_episode_return              the last training episode's return (NaN before the first)
    rewind_trainer_eval_return                 the last evaluation's mean return (NaN before the first)
    rewind_trainer_checkpoint_blocking_seconds how long the last checkpoint paused training
    rewind_trainer_checkpoint_step             the step of the last committed checkpoint (-1: none)
    rewind_trainer_checkpoint_age_seconds      seconds since the last checkpoint of this process committed
    rewind_trainer_checkpoint_saves_total      checkpoints committed by this process
    rewind_trainer_checkpoint_failures_total   checkpoints that failed (training went on)
    rewind_trainer_replay_shards{state}        a sharded run's shards: live, down, answering (not yet restored)
    rewind_trainer_limiter_retries_total       a learner's: batch streams its shards' rate limiters held back past
                                               their timeout (each opened again)
    rewind_trainer_batch_wait_seconds_total    a learner's: seconds spent waiting for batches (the limiters, the shards)
    rewind_trainer_policy_lag{collector}       a learner's: updates since the policy of each collector's latest episode
    rewind_trainer_policy_lag_mean             a learner's: their mean over the collectors
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rewind.sharded_buffer_client import ANSWERING, DOWN, LIVE
from rewind_trainer.learner import Learner
from rewind_trainer.service import TrainerServicer


class TrainerCollector(Collector):
    """Reads one trainer (through its servicer: the loop, its state and the checkpointer) when Prometheus scrapes.

    Create it before the loop starts training: the updates' rate counts from then.
    """

    def __init__(self, servicer: TrainerServicer, clock: Callable[[], float] = time.time) -> None:
        self.servicer = servicer
        self.clock = clock
        trainer = servicer.trainer
        self._step0 = trainer.state.step
        self._updates0 = self._updates()

    def describe(self) -> list[Metric]:
        return []

    def _updates(self) -> int:
        trainer = self.servicer.trainer
        return trainer.updates

    def collect(self) -> Iterator[Metric]:
        run = self.servicer.run
        labels = [run.agent_id, run.run_id]
        trainer, s, c = self.servicer.trainer, self.servicer.trainer.state, self.servicer.checkpointer.status
        steps_per_s = trainer.steps_per_second
        updates = self._updates()
        stepped = s.step - self._step0
        updates_per_s = steps_per_s * (updates - self._updates0) / stepped if stepped > 0 else 0.0
        gauges = [
            ("step", "Agent steps taken (each is action_repeat environment steps)", s.step),
            ("env_steps", "Environment steps taken (agent steps x action_repeat)",
             s.step * trainer.settings.action_repeat),
            ("episodes", "Training episodes finished", s.episode),
            ("steps_per_second", "Agent steps per second since the start or resume, evaluation time left out",
             steps_per_s),
            ("updates_per_second", "Gradient updates per second since this process started training", updates_per_s),
            ("episode_return", "Return of the last training episode (NaN before the first)", s.episode_return),
            ("eval_return", "Mean return of the last evaluation (NaN before the first)", s.eval_return),
            ("checkpoint_blocking_seconds", "Seconds the last checkpoint paused training", c.blocking_ms / 1000),
            ("checkpoint_step", "Step of the last committed checkpoint (-1: none yet)", c.step),
        ]
        committed_at = c.committed_at
        if committed_at:
            gauges.append(("checkpoint_age_seconds", "Seconds since the last checkpoint of this process committed",
                           max(self.clock() - committed_at, 0.0)))
        for name, documentation, value in gauges:
            yield _one(GaugeMetricFamily(f"rewind_trainer_{name}", documentation, labels=["agent_id", "run_id"]),
                       labels, value)
        shards = getattr(trainer.buffer, "shards", None)  # a sharded run's replay
        if shards is not None:
            family = GaugeMetricFamily("rewind_trainer_replay_shards", "Shards of the replay by state: live (sampled "
                                       "and written), down (lost, probed), answering (back, not yet restored)",
                                       labels=["agent_id", "run_id", "state"])
            for state in (LIVE, DOWN, ANSWERING):
                family.add_metric([*labels, state], float(sum(shard.state == state for shard in shards)))
            yield family
        counters = [("updates", "Gradient updates since the run began", updates),
                    ("checkpoint_saves", "Checkpoints committed by this process", c.saves),
                    ("checkpoint_failures", "Checkpoints that failed (training went on)", c.failures)]
        if isinstance(trainer, Learner):
            counters += [("limiter_retries", "Batch streams the shards' rate limiters held back past their timeout, "
                          "each opened again", trainer.limiter_retries),
                         ("batch_wait_seconds", "Seconds spent waiting for batches (the rate limiters, the shards)",
                          trainer.batch_wait_s)]
        if isinstance(trainer, Learner):
            yield from _lags(labels, trainer.policy_lags)
        for name, documentation, value in counters:
            yield _one(CounterMetricFamily(f"rewind_trainer_{name}", documentation, labels=["agent_id", "run_id"]),
                       labels, value)


def _lags(labels: list[str], lags: dict[str, int]) -> Iterator[Metric]:
    family = GaugeMetricFamily("rewind_trainer_policy_lag", "Updates since the policy a collector's latest episode "
                               "was acted with", labels=["agent_id", "run_id", "collector"])
    for collector, lag in sorted(lags.items()):
        family.add_metric([*labels, collector], float(lag))
    yield family
    mean = sum(lags.values()) / len(lags) if lags else math.nan
    yield _one(GaugeMetricFamily("rewind_trainer_policy_lag_mean", "Mean policy lag over the collectors (NaN: none "
                                 "yet)", labels=["agent_id", "run_id"]), labels, mean)


def _one(family: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: float) -> Metric:
    family.add_metric(labels, float(value))
    return family
