"""Seed 002 (a TD-MPC2 replay buffer for robot soccer), its quick start as written:

    cfg = read_cfg()                       # cfg/default.toml, [config] table
    buffer = ReplayBuffer(cfg)
    buffer.add(episode)                    # TensorDict (100 steps, obs 64, action 8)
    if buffer.ready():
        obs, action, reward, done = buffer.sample()
    buffer.load(episodes)                  # (num_episodes, episode_length, ...)
    buffer.capacity, buffer.num_eps

Rewind's names: the same cfg/default.toml given to `rewind buffer serve --config`, and
`rewind.BufferClient` for `ReplayBuffer`, whose methods keep the seed's names.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

from rewind import BufferClient
from tests.support.processes import ServiceProcess

DEFAULT_TOML = """[config]
buffer_size = 1_000_000    # Maximum transitions
batch_size = 256           # Sequences per batch
min_history = 100_000      # Minimum before training
horizon = 3                # Planning horizon
"""


def episode(length: int = 100, seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "obs": torch.randn(length, 64, generator=g),       # 100 steps, 64-dim observation
        "action": torch.randn(length, 8, generator=g),     # 100 steps, 8-dim action
        "reward": torch.randn(length, generator=g),        # 100 rewards
        "done": torch.zeros(length),                       # done flags
    }, batch_size=[length])


def test_the_quick_start_with_the_seeds_config_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "default.toml").write_text(DEFAULT_TOML)
    seed_config = ServiceProcess(tmp_path, "--config", "cfg/default.toml", group="buffer")
    try:
        with BufferClient(seed_config.address) as buffer:
            assert buffer.add(episode()) == 1
            assert not buffer.ready()  # min_history = 100_000 transitions before sampling
            assert (buffer.capacity, buffer.num_eps) == (1_000_000, 1)
    finally:
        seed_config.stop()

    overridden = ServiceProcess(tmp_path, "--config", "cfg/default.toml", "--min-history", "0", group="buffer")
    try:
        with BufferClient(overridden.address) as buffer:
            stored = episode()
            buffer.add(stored)
            assert buffer.ready()
            obs, action, reward, done = buffer.sample()
            assert (obs.shape, action.shape, reward.shape, done.shape) == (
                (4, 256, 64), (3, 256, 8), (3, 256, 1), (3, 256, 1))  # (horizon+1, batch_size, ...)
            for b in range(256):  # every sequence is 4 consecutive steps of the stored episode
                [start] = [i for i in range(100) if torch.equal(stored["obs"][i], obs[0, b])]
                assert torch.equal(obs[:, b], stored["obs"][start:start + 4])
                assert torch.equal(action[:, b], stored["action"][start + 1:start + 4])
                assert torch.equal(reward[:, b, 0], stored["reward"][start + 1:start + 4])
            assert buffer.load(torch.stack([episode(seed=s) for s in (1, 2, 3)])) == 4
            assert (buffer.capacity, buffer.num_eps) == (1_000_000, 4)
    finally:
        overridden.stop()
