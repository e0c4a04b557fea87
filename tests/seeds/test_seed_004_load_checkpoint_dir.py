"""Seed 004 (CO-GYM's model management), its usage as written:

    my_config = {'load_model': True, 'load_checkpoint_dir': 'PPO_Hopper-v4_2024-07-15_23:37:55/checkpoint_3'}
    trainer = co_gym.load(env, algorithm=algorithm, config=my_config)
    trainer.train()

and its rule: "to successfully load the model, other parameters in the configuration must match
those of the saved model". Rewind's names: `rewind.train(**my_config)` with `resume_from_checkpoint`
for `load_checkpoint_dir`, and `rewind-data/tdmpc2/pendulum-v1-seed1/step-N` for the checkpoint folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rewind
from rewind.errors import FailedPrecondition
from tests.support.seeds import listing, workspace
from tests.support.trainer import AGENT

QUICK = dict(seed_steps=1000, eval_episodes=0, port=-1, progress=False, torch_threads=1, agent=AGENT)


@pytest.fixture
def ws(tmp_path, store_url, monkeypatch):
    ws = workspace(tmp_path, store_url, "rewind-data")
    monkeypatch.chdir(ws.cwd)
    # on file:// the run's default store is ./rewind-data; on S3 the first run names it
    store = {} if store_url.startswith("file://") else {"store": ws.url}
    first = rewind.train(task="Pendulum-v1", model_size="tiny", steps=5, **store, **QUICK)
    assert first.checkpoint == ws.checkpoint_url(5)
    return ws


def test_a_checkpoint_folder_loads_and_training_continues(ws):
    my_config = {"resume_from_checkpoint": ws.checkpoint(5)}
    result = rewind.train(**my_config, model_size="tiny", steps=10, **QUICK)
    assert (result.step, result.resumed_from, result.checkpoint) == (10, ws.checkpoint_url(5), ws.checkpoint_url(10))
    if ws.url.startswith("file://"):  # the folder, plus the buffer blocks the run's blocks/ folder holds
        folder = Path(ws.url.removeprefix("file://")) / "tdmpc2" / "pendulum-v1-seed1" / "step-0000000010"
        assert {p.name for p in folder.iterdir()} == {"manifest.json", "trainer.pt", "policy.safetensors",
                                                      "buffer.snapshot", "test_buffer.snapshot"}
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (manifest["step"], manifest["config"]["settings"]["model_size"]) == (10, "tiny")


def test_other_parameters_must_match_and_each_mismatch_is_named_before_anything_is_written(ws):
    before = listing(ws)
    with pytest.raises(FailedPrecondition) as raised:
        rewind.train(resume_from_checkpoint=ws.checkpoint(5), model_size="1", action_repeat=2, steps=10, **QUICK)
    message = str(raised.value)
    assert "model_size (checkpoint 'tiny', given '1')" in message
    assert "action_repeat (checkpoint 1, given 2)" in message
    assert listing(ws) == before
