"""The online loop, top to bottom (TD-MPC2's schedule): random actions for the
seed steps, a burst of updates when they end, then one update per environment
step; evaluation every `eval_freq` steps. Episodes go to the buffer service's
`buffer`, evaluation episodes to its `test_buffer`; batches come back from it.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from rewind.buffer_client import BufferClient
from rewind.errors import FailedPrecondition
from rewind_trainer.agent import TDMPC2
from rewind_trainer.envs import GymEnv, make_env
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass
class EpisodeRecorder:
    """One episode in TD-MPC2's layout: step 0 holds the first observation and NaN action/reward."""

    obs: list[torch.Tensor] = field(default_factory=list)
    action: list[torch.Tensor] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    done: list[float] = field(default_factory=list)

    def start(self, obs: torch.Tensor, action_dim: int) -> None:
        self.obs, self.action = [obs], [torch.full((action_dim,), float("nan"))]
        self.reward, self.done = [float("nan")], [0.0]

    def record(self, obs: torch.Tensor, action: torch.Tensor, reward: float, terminated: bool) -> None:
        self.obs.append(obs)
        self.action.append(action.float())
        self.reward.append(reward)
        self.done.append(float(terminated))

    @property
    def steps(self) -> int:
        return len(self.obs) - 1

    @property
    def episode_return(self) -> float:
        return float(sum(self.reward[1:]))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"obs": torch.stack(self.obs), "action": torch.stack(self.action),
                "reward": torch.tensor(self.reward), "done": torch.tensor(self.done)}


class MetricsLog:
    """Appends rows to <out_dir>/metrics.csv (one file per run, columns fixed at creation)."""

    COLUMNS = ("step", "episode", "kind", "episode_return", "episode_steps", "steps_per_s", "consistency_loss",
               "reward_loss", "value_loss", "pi_loss", "total_loss", "grad_norm", "pi_entropy", "pi_scale")

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.csv"
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.COLUMNS)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self.COLUMNS])


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def check_buffer(buffer: BufferClient, cfg: AgentConfig, seed_steps: int) -> None:
    """The buffer service must sample what the agent learns from.

    Raises:
        FailedPrecondition: batch size, horizon or min_history do not fit, naming the flag to change.
    """
    settings = buffer.stats().settings
    wrong = []
    if settings.batch_size != cfg.batch_size:
        wrong.append(f"batch_size is {settings.batch_size}, the agent needs {cfg.batch_size} (--batch-size)")
    if settings.horizon != cfg.horizon:
        wrong.append(f"horizon is {settings.horizon}, the agent needs {cfg.horizon} (--horizon)")
    if settings.min_history > seed_steps:
        wrong.append(f"min_history is {settings.min_history}, above the {seed_steps} seed steps (--min-history)")
    if wrong:
        raise FailedPrecondition(f"buffer service at {buffer.address}: " + "; ".join(wrong)
                                 + "; restart `rewind buffer serve` with those flags")


def evaluate(env: GymEnv, agent: TDMPC2, test_buffer: BufferClient, episodes: int) -> float:
    """Mean return of `episodes` episodes acting in eval mode; each goes to the test buffer."""
    returns = []
    for _ in range(episodes):
        recorder = EpisodeRecorder()
        obs, done = env.reset(), False
        recorder.start(obs, env.action_dim)
        while not done:
            action = agent.act(obs, t0=recorder.steps == 0, eval_mode=True)
            obs, reward, terminated, truncated = env.step(action)
            recorder.record(obs, action, reward, terminated)
            done = terminated or truncated
        test_buffer.add(recorder.tensors())
        returns.append(recorder.episode_return)
    return sum(returns) / len(returns) if returns else math.nan


def train(settings: TrainSettings, *, progress: bool = True) -> dict:
    """Run the online loop to `settings.steps`; returns the final metrics."""
    env = make_env(settings.task, settings.seed, settings.action_repeat)
    agent_cfg = AgentConfig(obs_dim=env.obs_dim, action_dim=env.action_dim, episode_length=env.episode_length,
                            model_size=settings.model_size, mpc=settings.mpc, **settings.agent)
    agent = TDMPC2(agent_cfg, seed=settings.seed, device=settings.device)
    seed_steps = settings.seed_steps or max(1000, 5 * env.episode_length)
    buffer = BufferClient(settings.buffer_address, "buffer")
    test_buffer = buffer.using("test_buffer")
    check_buffer(buffer, agent_cfg, seed_steps)
    metrics_log = MetricsLog(Path(settings.out_dir))
    random_actions = torch.Generator().manual_seed(settings.seed)

    step, episode, done, eval_next = 0, 0, True, False
    recorder, obs = EpisodeRecorder(), None
    last: dict = {"eval_return": math.nan, "episode_return": math.nan}
    bar = tqdm(total=settings.steps, disable=not progress, unit="step", desc=f"{settings.task} ({agent.mode})")
    started = time.perf_counter()
    while step < settings.steps:
        if step % settings.eval_freq == 0:
            eval_next = True
        if done:
            if eval_next and settings.eval_episodes:
                last["eval_return"] = evaluate(env, agent, test_buffer, settings.eval_episodes)
                metrics_log.write(step=step, episode=episode, kind="eval", episode_return=last["eval_return"])
                eval_next = False
            if step > 0:
                buffer.add(recorder.tensors())
                episode += 1
                last["episode_return"] = recorder.episode_return
                metrics_log.write(step=step, episode=episode, kind="train", episode_return=recorder.episode_return,
                                  episode_steps=recorder.steps,
                                  steps_per_s=step / (time.perf_counter() - started), **last.get("losses", {}))
                bar.set_postfix(ret=f"{last['episode_return']:.1f}", eval=f"{last['eval_return']:.1f}")
            obs = env.reset()
            recorder.start(obs, env.action_dim)

        if step > seed_steps:
            action = agent.act(obs, t0=recorder.steps == 0)
        else:
            action = env.random_action(random_actions)
        obs, reward, terminated, truncated = env.step(action)
        recorder.record(obs, action, reward, terminated)
        done = terminated or truncated

        if step >= seed_steps:
            updates = seed_steps if step == seed_steps else 1  # the burst when the seed steps end
            for _ in range(updates):
                last["losses"] = agent.update(*buffer.sample())
        step += 1
        bar.update(1)
    bar.close()
    buffer.close()
    return {"step": step, "episode": episode, "agent": agent, **last}
