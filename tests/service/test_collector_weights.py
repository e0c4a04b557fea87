"""A collector's weights while its learner does not answer: the latest checkpoint's policy, with the generation
and routing seed of its cut, and an agent built from the file alone."""

from __future__ import annotations

import dataclasses

import torch

from rewind import CheckpointClient
from rewind_checkpoint.server import serve as serve_checkpoints
from rewind_trainer.agent import TDMPC2
from rewind_trainer.checkpointer import POLICY_FILE, encode_policy
from rewind_trainer.collect import WeightsSource, agent_from
from rewind_trainer.collect_settings import CollectSettings
from rewind_trainer.hparams import AgentConfig
from tests.support.configs import checkpoint_config
from tests.support.processes import free_port


def test_without_its_learner_a_collector_acts_with_the_latest_checkpoint(tmp_path):
    config = AgentConfig(obs_dim=3, action_dim=1, episode_length=200, model_size="tiny", mpc=True, num_samples=32,
                         num_elites=4, num_pi_trajs=2, iterations=2)
    learner = TDMPC2(config, seed=5)
    policy = encode_policy(learner.model.state_dict(), dataclasses.asdict(config))
    host = serve_checkpoints(checkpoint_config(f"file://{tmp_path}/store"))
    try:
        nobody = f"127.0.0.1:{free_port()}"  # the learner: nothing listens there
        source = WeightsSource(CollectSettings(buffer_addresses=("127.0.0.1:1",), learner_address=nobody,
                                               checkpoint_address=host.address, run_id="run-a"))
        try:
            with CheckpointClient(host.address) as ckpt:
                # A checkpoint that records no policy version (older trainers): its step stands for it.
                ckpt.save("tdmpc2", "run-a", 300, {POLICY_FILE: policy},
                          extra={"cut": {"shards": 2, "routing_seed": 7, "generation": 2}})
                assert source.newest(-1, timeout_s=2).version == 300
                # A learner's records the version it published the policy as: its update count.
                ckpt.save("tdmpc2", "run-a", 500, {POLICY_FILE: policy}, extra={
                    "cut": {"shards": 2, "routing_seed": 7, "generation": 3}, "policy_version": 420})
            weights = source.newest(300, timeout_s=2)
            assert (weights.version, weights.generation, weights.routing_seed, weights.step) == (420, 3, 7, 500)
            assert weights.data == policy
            assert source.newest(420, timeout_s=2) is None  # nothing newer than what it holds
        finally:
            source.close()
        agent = agent_from(weights.data, seed=11, device="cpu")
        assert agent.cfg == config
        mine, theirs = agent.model.state_dict(), learner.model.state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith("target_qs."))
        assert agent.act(torch.zeros(3), t0=True).shape == (1,)
        # Without --run-id there is no fallback: it keeps what it holds.
        alone = WeightsSource(CollectSettings(buffer_addresses=("127.0.0.1:1",), learner_address=nobody))
        try:
            assert alone.newest(-1, timeout_s=2) is None
        finally:
            alone.close()
    finally:
        host.stop(grace_s=0.5)
