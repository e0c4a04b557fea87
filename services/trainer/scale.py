"""RunningScale: the Q-value scale that normalises the policy loss (TD-MPC2)."""

from __future__ import annotations

import torch


class RunningScale:
    """A running estimate of the 5th-95th percentile range of Q, smoothed with `tau`."""

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.value = torch.ones(1)
        self.initialized = False

    def update(self, x: torch.Tensor) -> None:
        q = torch.quantile(x.detach().float().flatten(), torch.tensor([0.05, 0.95], device=x.device))
        value = torch.clamp(q[1] - q[0], min=1.0).cpu().reshape(1)
        if not self.initialized:
            self.value = value
            self.initialized = True
        else:
            self.value = torch.lerp(self.value, value, self.tau)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.value.to(x.device)

    def state_dict(self) -> dict:
        return {"value": self.value.clone(), "initialized": self.initialized}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"].clone()
        self.initialized = bool(state["initialized"])
