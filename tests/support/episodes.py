"""Traceable episodes: every value says which episode and step it came from."""

from __future__ import annotations

import torch

OBS_DIM = 3
ACTION_DIM = 2


def episode(eid: int, length: int, *, obs_dim: int = OBS_DIM, action_dim: int = ACTION_DIM) -> dict[str, torch.Tensor]:
    """An episode whose every value encodes (episode id, step): eid * 1000 + t."""
    t = torch.arange(length, dtype=torch.float32) + 1000.0 * eid
    return {
        "obs": t.unsqueeze(-1) + torch.arange(obs_dim, dtype=torch.float32) * 0.125,
        "action": t.unsqueeze(-1).repeat(1, action_dim) + 0.5,
        "reward": t + 0.25,
        "done": (torch.arange(length) == length - 1).float(),
    }


def check_batch_against(batch, episodes: dict[int, dict[str, torch.Tensor]], horizon: int, batch_size: int) -> None:
    """Assert every sequence in `batch` is a contiguous slice of one stored episode."""
    obs, action, reward, done = batch
    assert obs.shape == (horizon + 1, batch_size, OBS_DIM)
    assert action.shape == (horizon, batch_size, ACTION_DIM)
    assert reward.shape == (horizon, batch_size, 1)
    assert done.shape == (horizon, batch_size, 1)
    for b in range(batch_size):
        first = int(obs[0, b, 0].item())
        eid, t0 = divmod(first, 1000)
        ep = episodes[eid]
        assert t0 + horizon < ep["obs"].shape[0], "sequence runs past its episode's end"
        torch.testing.assert_close(obs[:, b], ep["obs"][t0 : t0 + horizon + 1], rtol=0, atol=0)
        torch.testing.assert_close(action[:, b], ep["action"][t0 + 1 : t0 + horizon + 1], rtol=0, atol=0)
        torch.testing.assert_close(reward[:, b, 0], ep["reward"][t0 + 1 : t0 + horizon + 1], rtol=0, atol=0)
        torch.testing.assert_close(done[:, b, 0], ep["done"][t0 + 1 : t0 + horizon + 1], rtol=0, atol=0)

