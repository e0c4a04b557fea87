"""TD-MPC2's implicit world model: SimNorm encoder, latent dynamics, reward,
a dropout Q-ensemble with Polyak-averaged targets, and a policy prior."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rewind_trainer.hparams import AgentConfig
from rewind_trainer.twohot import gaussian_logprob, squash


class SimNorm(nn.Module):
    """Simplicial normalisation: softmax over consecutive groups of `dim` features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return F.softmax(x.view(*shape[:-1], -1, self.dim), dim=-1).view(shape)


class NormedLinear(nn.Linear):
    """Linear, then optional dropout, LayerNorm and an activation (Mish unless given)."""

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, act: nn.Module | None = None):
        super().__init__(in_features, out_features)
        self.ln = nn.LayerNorm(out_features)
        self.act = act if act is not None else nn.Mish(inplace=False)
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


def mlp(in_dim: int, hidden: list[int], out_dim: int, act: nn.Module | None = None, dropout: float = 0.0):
    """NormedLinear hidden layers (dropout on the first only), a plain or activated output layer."""
    dims = [in_dim, *hidden]
    layers: list[nn.Module] = [NormedLinear(dims[i], dims[i + 1], dropout=dropout * (i == 0))
                               for i in range(len(hidden))]
    layers.append(NormedLinear(dims[-1], out_dim, act=act) if act is not None else nn.Linear(dims[-1], out_dim))
    return nn.Sequential(*layers)


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class WorldModel(nn.Module):
    """All of TD-MPC2's networks for one task with flat observations."""

    def __init__(self, cfg: AgentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        latent, action = cfg.latent_dim, cfg.action_dim
        self.encoder = mlp(cfg.obs_dim, max(cfg.num_enc_layers - 1, 1) * [cfg.enc_dim], latent,
                           act=SimNorm(cfg.simnorm_dim))
        self.dynamics = mlp(latent + action, 2 * [cfg.mlp_dim], latent, act=SimNorm(cfg.simnorm_dim))
        self.reward_head = mlp(latent + action, 2 * [cfg.mlp_dim], cfg.num_bins)
        self.pi_head = mlp(latent, 2 * [cfg.mlp_dim], 2 * action)
        self.qs = nn.ModuleList([mlp(latent + action, 2 * [cfg.mlp_dim], cfg.num_bins, dropout=cfg.dropout)
                                 for _ in range(cfg.num_q)])
        self.apply(_init)
        # Zero-init the reward and Q outputs: predictions start at 0 (TD-MPC2).
        for head in (self.reward_head, *self.qs):
            nn.init.zeros_(head[-1].weight)
        self.target_qs = copy.deepcopy(self.qs).requires_grad_(False)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs)

    def next(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.dynamics(torch.cat([z, a], dim=-1))

    def reward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.reward_head(torch.cat([z, a], dim=-1))

    def pi(self, z: torch.Tensor, generator: torch.Generator | None = None):
        """Sample from the squashed-Gaussian policy prior: (mean, action, info)."""
        mean, log_std = self.pi_head(z).chunk(2, dim=-1)
        cfg = self.cfg
        log_std = cfg.log_std_min + 0.5 * (cfg.log_std_max - cfg.log_std_min) * (torch.tanh(log_std) + 1)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        log_prob = gaussian_logprob(eps, log_std)
        action = mean + eps * log_std.exp()
        mean, action, log_prob = squash(mean, action, log_prob)
        entropy = -log_prob
        return mean, action, {"log_std": log_std, "entropy": entropy, "scaled_entropy": entropy * cfg.action_dim}

    def q(self, z: torch.Tensor, a: torch.Tensor, *, target: bool = False, detach: bool = False) -> torch.Tensor:
        """Every Q head's logits: (num_q, ..., num_bins). `detach` stops gradients into the Q weights."""
        za = torch.cat([z, a], dim=-1)
        heads = self.target_qs if target else self.qs
        if detach:
            # Gradients flow to the inputs (the policy's actions) but not to the Q weights.
            return torch.stack([torch.func.functional_call(q, {k: v.detach() for k, v in q.named_parameters()}, (za,))
                                for q in heads])
        return torch.stack([q(za) for q in heads])

    @torch.no_grad()
    def soft_update_targets(self, tau: float) -> None:
        for target, online in zip(self.target_qs.parameters(), self.qs.parameters(), strict=True):
            target.lerp_(online, tau)

    def train(self, mode: bool = True) -> WorldModel:
        super().train(mode)
        self.target_qs.train(False)  # targets never use dropout
        return self
