"""The online loop through a real buffer service on 127.0.0.1, with a tiny model."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from rewind.errors import FailedPrecondition
from rewind_buffer.server import serve
from rewind_buffer.settings import BufferServiceSettings
from rewind_trainer.run import train
from rewind_trainer.settings import TrainSettings
from tests.support.configs import checkpoint_config

AGENT = {"batch_size": 8, "num_samples": 32, "num_elites": 4, "num_pi_trajs": 2, "iterations": 2}


@pytest.fixture
def buffer_service():
    host = serve(BufferServiceSettings(buffer_size=5000, batch_size=8, min_history=100, horizon=3, port=0))
    yield host
    host.stop(grace_s=0.5)


@pytest.fixture
def ckpt_address(tmp_path):
    from rewind_checkpoint.server import serve as serve_checkpoints

    host = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store", max_message_mb=64))
    yield host.address
    host.stop(grace_s=0.5)


@pytest.mark.parametrize("eval_at_start", [False, True])
def test_a_short_run_fills_both_buffers_and_learns(buffer_service, ckpt_address, tmp_path, eval_at_start):
    from rewind import BufferClient

    settings = TrainSettings(steps=450, seed_steps=200, eval_freq=400, eval_episodes=1, model_size="tiny",
                             buffer_address=buffer_service.address, checkpoint_address=ckpt_address,
                             out_dir=str(tmp_path), agent=AGENT, port=-1, progress=False, buffer_size=5000,
                             eval_at_start=eval_at_start)
    result = train(settings)
    assert (result.step, result.episode) == (450, 2)
    buffer = BufferClient(buffer_service.address, "buffer")
    stats = buffer.stats()
    assert (stats.episodes_added, stats.transitions) == (2, 2 * 201)  # 200 steps + the first observation
    # The burst at step 200, then one per step to 449; streams never sample a batch nobody uses.
    assert stats.batches_sampled == 200 + 249
    # Evaluations at step 400 (an episode boundary), a final one at 450, and at step 0 only when asked.
    assert buffer.using("test_buffer").stats().episodes_added == 2 + eval_at_start
    assert all(math.isfinite(v) for v in result.agent.update(*buffer.sample()).values())
    rows = list(csv.DictReader(open(result.run_dir / "metrics.csv")))
    assert [(r["kind"], r["step"]) for r in rows] == [("eval", "0")] * eval_at_start + [
        ("train", "200"), ("train", "400"), ("eval", "400"), ("eval", "450")]
    assert float(rows[eval_at_start]["episode_return"]) < 0  # Pendulum's rewards are negative


def test_the_trainer_makes_its_buffers_with_its_own_shapes(buffer_service, ckpt_address, tmp_path):
    from rewind import BufferClient

    # The service was started for batches of 8 and min_history 100; the agent learns from batches of 16.
    leftover = BufferClient(buffer_service.address, "buffer")
    leftover.add({"obs": torch.zeros(50, 3), "action": torch.zeros(50, 1), "reward": torch.zeros(50),
                  "done": torch.zeros(50)})  # a trainer that died before its first checkpoint left this
    settings = TrainSettings(steps=250, seed_steps=200, eval_episodes=0, model_size="tiny",
                             buffer_address=buffer_service.address, checkpoint_address=ckpt_address,
                             out_dir=str(tmp_path), port=-1, progress=False, buffer_size=3000,
                             agent={**AGENT, "batch_size": 16, "horizon": 4})
    result = train(settings)
    assert result.step == 250
    for name in ("buffer", "test_buffer"):
        stats = leftover.using(name).stats()
        assert (stats.settings.batch_size, stats.settings.horizon, stats.settings.min_history,
                stats.settings.buffer_size) == (16, 4, 0, 3000)
    assert leftover.stats().episodes_added == 1  # the leftover episode is gone: only this run's episode


def test_a_restored_buffer_that_does_not_fit_the_agent_is_named(buffer_service):
    from rewind import BufferClient
    from rewind_trainer.connections import check_buffer
    from rewind_trainer.hparams import AgentConfig

    with BufferClient(buffer_service.address, "buffer") as client:
        with pytest.raises(FailedPrecondition, match=r"batch_size is 8, the agent needs 16; horizon is 3, the agent "
                                                     r"needs 5"):
            check_buffer(client, AgentConfig(obs_dim=3, action_dim=1, model_size="tiny", batch_size=16, horizon=5))


def test_the_progress_bar_leaves_evaluations_out_of_its_rate_and_names_the_evaluations_step(
        buffer_service, ckpt_address, tmp_path, monkeypatch):
    """Evaluations are made slow on purpose (each takes PAUSE_S longer); the bar's elapsed time, which its
    rate and time left come from, and steps_per_second must not count them."""
    import time

    from rewind_trainer import loop

    pause_s, closed, runs = 1.0, [], []
    evaluate, run = loop.Trainer._evaluate_episodes, loop.Trainer.run

    def slow_evaluation(trainer):
        done = evaluate(trainer)
        time.sleep(pause_s)  # the workload of a slow evaluation, not a wait for anything
        return done

    def timed_run(trainer):
        started = time.perf_counter()
        run(trainer)
        runs.append((time.perf_counter() - started, trainer.steps_per_second))

    class RecordedBar(loop.tqdm):
        def close(self):
            if not self.disable:
                closed.append(dict(self.format_dict))
            super().close()

    monkeypatch.setattr(loop.Trainer, "_evaluate_episodes", slow_evaluation)
    monkeypatch.setattr(loop.Trainer, "run", timed_run)
    monkeypatch.setattr(loop, "tqdm", RecordedBar)
    settings = TrainSettings(steps=450, seed_steps=200, eval_freq=400, eval_episodes=1, model_size="tiny",
                             buffer_address=buffer_service.address, checkpoint_address=ckpt_address,
                             out_dir=str(tmp_path), agent=AGENT, port=-1, progress=True, buffer_size=5000,
                             eval_at_start=True)
    train(settings)
    ((run_s, steps_per_second),), (bar,) = runs, closed
    # Two evaluations ran inside the loop (steps 0 and 400); the final one at 450 runs after the bar closes.
    assert bar["n"] == 450 and bar["elapsed"] <= run_s - 2 * pause_s
    assert steps_per_second >= 450 / (run_s - 2 * pause_s)
    assert "eval=" in bar["postfix"] and "at step 400" in bar["postfix"]
