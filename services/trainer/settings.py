"""The trainer's own settings: task, schedule, services, checkpoints. The
agent's hyperparameters live in hparams.py."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rewind.errors import InvalidArgument


@dataclass(frozen=True)
class TrainSettings:
    """What `rewind train` runs (flags and the YAML file map onto these names)."""

    task: str = "Pendulum-v1"
    seed: int = 1
    steps: int = 8_000                 # environment steps (after action repeat)
    seed_steps: int = 0                # random-action steps before learning; 0: max(1000, 5 episodes)
    action_repeat: int = 1
    model_size: str = "1"
    mpc: bool = True                   # plan with MPPI; False acts with the policy prior only
    eval_freq: int = 2_000
    eval_episodes: int = 10
    device: str = "cpu"
    buffer_address: str = "127.0.0.1:50051"
    out_dir: str = "runs"
    agent: dict[str, Any] = field(default_factory=dict)  # AgentConfig overrides, e.g. {"lr": 1e-3}

    def __post_init__(self) -> None:
        for name in ("steps", "eval_freq", "action_repeat"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("seed_steps", "eval_episodes"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name}: must be zero or more, got {getattr(self, name)}")

    def replace(self, **changes) -> TrainSettings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
