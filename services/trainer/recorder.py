"""EpisodeRecorder: one episode as it happens, in TD-MPC2's layout."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
        return max(len(self.obs) - 1, 0)

    @property
    def episode_return(self) -> float:
        return float(sum(self.reward[1:]))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The episode for the buffer (rewards as float32, as TD-MPC2 keeps them)."""
        return {"obs": torch.stack(self.obs), "action": torch.stack(self.action),
                "reward": torch.tensor(self.reward), "done": torch.tensor(self.done)}

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """The episode so far, for a checkpoint (None: none began).

        Its rewards stay float64: rounded to float32 as in `tensors()`, the episode's return after a resume
        would differ from an uninterrupted run's in its last digits.
        """
        if not self.obs:
            return None
        return {**self.tensors(), "reward": torch.tensor(self.reward, dtype=torch.float64)}

    def load(self, tensors: dict[str, torch.Tensor] | None) -> None:
        """Continue the episode of a `state_dict()` (or of `tensors()`, as older checkpoints hold it)."""
        if not tensors:
            self.obs, self.action, self.reward, self.done = [], [], [], []
            return
        self.obs, self.action = list(tensors["obs"].unbind(0)), list(tensors["action"].unbind(0))
        self.reward, self.done = tensors["reward"].tolist(), tensors["done"].tolist()
