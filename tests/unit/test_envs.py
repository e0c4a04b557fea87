"""Environment wrappers: action scaling, action repeat, exact state round trips."""

from __future__ import annotations

import json

import pytest
import torch

from rewind.errors import InvalidArgument
from rewind_trainer.envs import make_env


def test_pendulum_shapes_and_action_scaling():
    env = make_env("Pendulum-v1", seed=1)
    assert (env.obs_dim, env.action_dim, env.episode_length) == (3, 1, 200)
    env.reset()
    env.step(torch.tensor([1.0]))
    assert env.env.unwrapped.last_u == pytest.approx(2.0)  # [-1, 1] -> Pendulum's [-2, 2]
    env.step(torch.tensor([-0.25]))
    assert env.env.unwrapped.last_u == pytest.approx(-0.5)


def test_action_repeat_sums_rewards_and_shortens_episodes():
    one, four = make_env("Pendulum-v1", seed=3), make_env("Pendulum-v1", seed=3, action_repeat=4)
    one.reset(), four.reset()
    a = torch.tensor([0.3])
    rewards = [one.step(a)[1] for _ in range(4)]
    assert four.step(a)[1] == pytest.approx(sum(rewards))
    assert four.episode_length == 50


def test_state_round_trip_continues_exactly_across_an_episode_end():
    env = make_env("Pendulum-v1", seed=1)
    env.reset()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        env.step(env.random_action(g))
    state = json.loads(json.dumps(env.get_state()))  # it must survive JSON
    actions = [env.random_action(g) for _ in range(200)]

    def rollout(e):
        out = [e.step(a) for a in actions[:150]]
        assert out[-1][3]  # the 200-step limit hit at the same moment
        out.append((e.reset(), 0.0, False, False))
        return out + [e.step(a) for a in actions[150:]]

    first = rollout(env)
    other = make_env("Pendulum-v1", seed=99)
    other.set_state(state)
    second = rollout(other)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x[0], y[0]) and x[1:] == y[1:]


def test_bad_tasks():
    with pytest.raises(InvalidArgument, match="task: 'NoSuchTask-v0'"):
        make_env("NoSuchTask-v0", seed=1)
    with pytest.raises(InvalidArgument, match="continuous action"):
        make_env("CartPole-v1", seed=1)
    with pytest.raises(InvalidArgument, match="action_repeat"):
        make_env("Pendulum-v1", seed=1, action_repeat=0)
