"""TD-MPC2's hyperparameters, in one visible place.

The values are the published ones (Hansen et al., 2024, and the public
implementation's config.yaml); `model_size` picks one of the published sizes,
plus a `tiny` preset that learns on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rewind.errors import InvalidArgument

# Sizes from the paper (millions of parameters), plus `tiny` for CPUs and tests.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"enc_dim": 64, "mlp_dim": 128, "latent_dim": 64, "num_enc_layers": 2, "num_q": 2},
    "1": {"enc_dim": 128, "mlp_dim": 384, "latent_dim": 128, "num_enc_layers": 2, "num_q": 2},
    "5": {"enc_dim": 256, "mlp_dim": 512, "latent_dim": 512, "num_enc_layers": 2, "num_q": 5},
    "19": {"enc_dim": 1024, "mlp_dim": 1024, "latent_dim": 768, "num_enc_layers": 3, "num_q": 5},
    "48": {"enc_dim": 1792, "mlp_dim": 1792, "latent_dim": 768, "num_enc_layers": 4, "num_q": 5},
    "317": {"enc_dim": 4096, "mlp_dim": 4096, "latent_dim": 1376, "num_enc_layers": 5, "num_q": 8},
}


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs; obs_dim, action_dim and episode_length come from the task."""

    obs_dim: int
    action_dim: int
    episode_length: int = 200
    model_size: str = "5"

    # optimisation
    lr: float = 3e-4
    enc_lr_scale: float = 0.3
    grad_clip_norm: float = 20.0
    tau: float = 0.01
    batch_size: int = 256
    horizon: int = 3
    rho: float = 0.5
    consistency_coef: float = 20.0
    reward_coef: float = 0.1
    value_coef: float = 0.1
    entropy_coef: float = 1e-4
    discount_denom: float = 5.0
    discount_min: float = 0.95
    discount_max: float = 0.995

    # actor
    log_std_min: float = -10.0
    log_std_max: float = 2.0

    # planning (MPPI)
    mpc: bool = True
    iterations: int = 6
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    min_std: float = 0.05
    max_std: float = 2.0
    temperature: float = 0.5

    # critic
    num_bins: int = 101
    vmin: float = -10.0
    vmax: float = 10.0
    dropout: float = 0.01
    simnorm_dim: int = 8

    # architecture (filled from model_size unless given)
    enc_dim: int = 0
    mlp_dim: int = 0
    latent_dim: int = 0
    num_enc_layers: int = 0
    num_q: int = 0

    def __post_init__(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise InvalidArgument(f"model_size: {self.model_size!r} is not one of {', '.join(MODEL_SIZES)}")
        for name, value in MODEL_SIZES[self.model_size].items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        for name in ("obs_dim", "action_dim", "episode_length", "batch_size", "horizon", "iterations",
                     "num_samples", "num_elites", "num_bins", "latent_dim", "num_q"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name}: must be positive, got {getattr(self, name)}")
        if self.num_q < 2:
            raise InvalidArgument(f"num_q: the TD target takes the min of two Qs; got {self.num_q}")
        if self.latent_dim % self.simnorm_dim:
            raise InvalidArgument(f"latent_dim: {self.latent_dim} is not a multiple of simnorm_dim {self.simnorm_dim}")
        if self.num_elites > self.num_samples:
            raise InvalidArgument(f"num_elites: {self.num_elites} exceeds num_samples {self.num_samples}")
        if self.num_pi_trajs >= self.num_samples:
            raise InvalidArgument(f"num_pi_trajs: {self.num_pi_trajs} must be below num_samples {self.num_samples}")

    @property
    def discount(self) -> float:
        """TD-MPC2's heuristic: longer episodes get a discount closer to 1."""
        frac = self.episode_length / self.discount_denom
        return min(max((frac - 1) / frac, self.discount_min), self.discount_max)


    def replace(self, **changes) -> AgentConfig:
        return dataclasses.replace(self, **changes)
