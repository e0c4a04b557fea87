"""TD-MPC2's numerics: symlog two-hot targets for rewards and values, and the
squashed-Gaussian policy's log-probabilities."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (torch.exp(torch.abs(x)) - 1)


class TwoHot:
    """Maps scalars to soft two-hot vectors over `num_bins` bins in symlog space, and back."""

    def __init__(self, num_bins: int, vmin: float, vmax: float) -> None:
        self.num_bins, self.vmin, self.vmax = num_bins, vmin, vmax
        self.bin_size = (vmax - vmin) / (num_bins - 1)
        self.bins = torch.linspace(vmin, vmax, num_bins)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 1) scalars -> (..., num_bins) two-hot vectors."""
        x = torch.clamp(symlog(x), self.vmin, self.vmax).squeeze(-1)
        position = (x - self.vmin) / self.bin_size
        index = torch.floor(position).long().clamp(max=self.num_bins - 1)
        offset = (position - index).unsqueeze(-1)
        out = torch.zeros(*x.shape, self.num_bins, device=x.device, dtype=x.dtype)
        out.scatter_(-1, index.unsqueeze(-1), 1 - offset)
        out.scatter_add_(-1, ((index + 1) % self.num_bins).unsqueeze(-1), offset)
        return out

    def decode(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., num_bins) logits -> (..., 1) scalars (the expectation, in symexp space)."""
        bins = self.bins.to(logits.device, logits.dtype)
        return symexp(torch.sum(F.softmax(logits, dim=-1) * bins, dim=-1, keepdim=True))

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(..., num_bins) logits, (..., 1) targets -> (..., 1) soft cross-entropy."""
        return -(self.encode(target) * F.log_softmax(logits, dim=-1)).sum(-1, keepdim=True)


def gaussian_logprob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Log-density of mean + exp(log_std) * eps, summed over action dimensions."""
    return (-0.5 * eps.pow(2) - log_std - LOG_SQRT_2PI).sum(-1, keepdim=True)


def squash(mu: torch.Tensor, pi: torch.Tensor, log_pi: torch.Tensor):
    """tanh-squash actions and correct the log-probability for it."""
    mu, pi = torch.tanh(mu), torch.tanh(pi)
    log_pi = log_pi - torch.log(F.relu(1 - pi.pow(2)) + 1e-6).sum(-1, keepdim=True)
    return mu, pi, log_pi
