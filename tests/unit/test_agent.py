"""The TD-MPC2 agent: its numerics, determinism, state, learning and planning."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rewind.errors import InvalidArgument
from rewind_trainer.agent import TDMPC2, policy_tensors
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.twohot import TwoHot, symexp, symlog
from rewind_trainer.world_model import SimNorm

SMALL = dict(model_size="tiny", batch_size=32, num_samples=64, num_elites=8, num_pi_trajs=4, iterations=3)


def cfg(**kw) -> AgentConfig:
    return AgentConfig(obs_dim=3, action_dim=1, **{**SMALL, **kw})


def batch(seed: int, target: float = 0.5):
    """Sequences whose reward only depends on the action: best action = target."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(4, 32, 3, generator=g)
    action = torch.rand(3, 32, 1, generator=g) * 2 - 1
    reward = -4 * (action - target) ** 2
    return obs, action, reward, torch.zeros(3, 32, 1)


def params(agent: TDMPC2) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in agent.model.parameters()])


def test_symlog_and_two_hot_round_trip():
    x = torch.tensor([-500.0, -3.2, -0.01, 0.0, 0.7, 42.0, 900.0]).unsqueeze(-1)
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)
    th = TwoHot(101, -10, 10)
    encoded = th.encode(x)
    assert torch.allclose(encoded.sum(-1), torch.ones(len(x)))
    assert ((encoded > 0).sum(-1) <= 2).all()
    # Decoding the log of a two-hot vector returns the value (softmax(log p) = p).
    assert torch.allclose(th.decode(torch.log(encoded + 1e-12)), x, rtol=1e-3, atol=1e-4)
    # Cross-entropy is smallest at the right target.
    logits = torch.log(th.encode(torch.tensor([[2.0]])) + 1e-12)
    losses = [th.cross_entropy(logits, torch.tensor([[v]])).item() for v in (0.0, 1.0, 2.0, 3.0)]
    assert losses.index(min(losses)) == 2


def test_simnorm_groups_sum_to_one():
    out = SimNorm(8)(torch.randn(5, 64))
    assert torch.allclose(out.view(5, 8, 8).sum(-1), torch.ones(5, 8))


def test_config_presets_and_discount():
    c = cfg()
    assert (c.latent_dim, c.mlp_dim, c.num_q) == (64, 128, 2)
    assert AgentConfig(obs_dim=3, action_dim=1).latent_dim == 512  # the default 5M model
    assert cfg(episode_length=200).discount == pytest.approx(0.975)
    assert cfg(episode_length=1000).discount == pytest.approx(0.995)
    assert cfg(episode_length=10).discount == pytest.approx(0.95)
    with pytest.raises(InvalidArgument, match="model_size"):
        cfg(model_size="7")
    with pytest.raises(InvalidArgument, match="num_elites"):
        cfg(num_elites=100)


def test_updates_are_deterministic_per_seed():
    a, b, c = TDMPC2(cfg(), seed=3), TDMPC2(cfg(), seed=3), TDMPC2(cfg(), seed=4)
    assert torch.equal(params(a), params(b)) and not torch.equal(params(a), params(c))
    for i in range(5):
        torch.manual_seed(100 + i)  # dropout draws from torch's global generator
        ma = a.update(*batch(i))
        torch.manual_seed(100 + i)
        mb = b.update(*batch(i))
        assert ma == mb
    assert torch.equal(params(a), params(b))
    assert not torch.equal(params(a), params(TDMPC2(cfg(), seed=3)))  # it did learn something


def test_state_dict_continues_bit_identically():
    a = TDMPC2(cfg(), seed=1)
    for i in range(3):
        a.update(*batch(i))
        a.act(torch.randn(3), t0=i == 0)
    state = a.state_dict()
    b = TDMPC2(cfg(), seed=99)
    b.load_state_dict(state)
    for agent in (a, b):
        torch.manual_seed(7)
        for i in range(3, 6):
            agent.update(*batch(i))
        agent.last = agent.act(torch.ones(3))
    assert torch.equal(params(a), params(b))
    assert torch.equal(a.last, b.last)
    assert a.scale.value.item() == b.scale.value.item()


@pytest.fixture
def two_torch_threads():
    """The thread count these figures were taken with: float sums, so the trained agent, depend on it, and a
    test process's count is whatever an earlier test in it set (or 1 in a worker sharing the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_learns_rewards_and_plans_toward_the_best_action(two_torch_threads):
    torch.manual_seed(0)
    agent = TDMPC2(cfg(), seed=0)
    first = agent.update(*batch(0))
    for i in range(1, 300):
        last = agent.update(*batch(i % 20))
    assert last["reward_loss"] < 0.5 * first["reward_loss"]
    # Rewards decoded from the reward head track the true function of the action.
    z = agent.model.encode(torch.zeros(5, 3))
    a = torch.tensor([[-1.0], [-0.5], [0.0], [0.5], [1.0]])
    predicted = agent.twohot.decode(agent.model.reward(z, a)).squeeze(-1)
    assert predicted.argmax().item() == 3  # a = 0.5 is best
    # MPPI, in eval mode, picks an action near the best one.
    actions = torch.stack([agent.act(torch.randn(3), t0=True, eval_mode=True) for _ in range(5)])
    assert actions.shape == (5, 1) and actions.abs().max() <= 1
    assert (actions - 0.5).abs().mean() < 0.25, actions


def test_policy_only_mode_is_labelled_and_acts():
    agent = TDMPC2(cfg(mpc=False), seed=0)
    assert agent.mode == "policy" and TDMPC2(cfg(), seed=0).mode == "mppi"
    a1 = agent.act(torch.zeros(3), eval_mode=True)
    a2 = agent.act(torch.zeros(3), eval_mode=True)
    assert torch.equal(a1, a2) and a1.abs().max() <= 1  # eval mode uses the mean


def test_bad_batch_shape_is_rejected():
    agent = TDMPC2(cfg(), seed=0)
    obs, action, reward, done = batch(0)
    with pytest.raises(ValueError, match="expected 4 observations"):
        agent.update(obs[:3], action, reward, done)


def test_set_lr_and_policy_state():
    agent = TDMPC2(cfg(), seed=0)
    agent.set_lr(1e-3)
    assert [g["lr"] for g in agent.optim.param_groups] == [pytest.approx(3e-4), 1e-3, 1e-3, 1e-3]
    assert agent.pi_optim.param_groups[0]["lr"] == 1e-3
    state = policy_tensors(agent.model.state_dict())
    assert not any(k.startswith("target_qs") for k in state) and "pi_head.0.weight" in state


def test_the_same_policy_writes_the_same_bytes_save_after_save_and_after_a_resume(tmp_path):
    """A sha256 must tell two policies apart only when a tensor differs: safetensors orders the metadata it
    is given differently from save to save, so the header is written by encode_policy."""
    from safetensors import safe_open
    from safetensors.torch import load

    from rewind_trainer.checkpointer import decode_trainer_state, encode_policy, encode_trainer_state

    agent = TDMPC2(cfg(), seed=1)
    for i in range(2):
        agent.update(*batch(i))
    config = dataclasses.asdict(cfg())
    saves = {encode_policy(agent.state_dict()["model"], config) for _ in range(25)}
    assert len(saves) == 1
    [policy] = saves
    # The resume's path: trainer.pt written and read back, into a new agent, whose policy is saved again.
    state = decode_trainer_state(encode_trainer_state({"agent": agent.state_dict()}), "test")
    resumed = TDMPC2(cfg(), seed=99)
    resumed.load_state_dict(state["agent"])
    assert encode_policy(resumed.state_dict()["model"], config) == policy
    # Still a safetensors file: every tensor acting needs, and the metadata.
    tensors = load(policy)
    expected = policy_tensors(agent.model.state_dict())
    assert tensors.keys() == expected.keys() and all(torch.equal(tensors[k], expected[k]) for k in expected)
    path = tmp_path / "policy.safetensors"
    path.write_bytes(policy)
    with safe_open(str(path), "pt") as opened:
        assert opened.metadata() == {"format": "rewind.policy/1", "agent_config": json.dumps(config)}


def test_streams_hold_about_a_second_of_updates_so_a_stop_waits_no_longer():
    from rewind_trainer.loop import STREAM_CHUNK, stream_chunk

    assert stream_chunk(0.0) == STREAM_CHUNK == 32  # not measured yet
    assert stream_chunk(0.002) == 32  # a tiny model: the cap
    assert stream_chunk(0.1) == 10  # a big model on a CPU: about a second of updates
    assert stream_chunk(0.4) == 2
    assert stream_chunk(5.0) == 1  # never none
