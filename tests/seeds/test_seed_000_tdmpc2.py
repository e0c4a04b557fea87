"""Seed 000 (TD-MPC2's buffer saving and resuming), its three usages as written, Hydra style:

    python train.py task=dog-run checkpoint_dir=/path/to/checkpoints
    python train.py task=dog-run resume_from_checkpoint=/path/to/checkpoints/default/1/model_50000.pt
    python train.py task=dog-run checkpoint_dir=/path/to/checkpoints resume_from_checkpoint=/path/to/...

Rewind's names: `rewind train`, the task Pendulum-v1 (dog-run needs DeepMind Control and hours),
`<checkpoint_dir>/<agent_id>/<run_id>/step-N/trainer.pt` for `<checkpoint_dir>/<exp_name>/<seed>/model_N.pt`.
On file:// the checkpoint folder is an absolute path, as in the seed; on S3 it is an s3:// URL.
"""

from __future__ import annotations

import pytest

import rewind
from tests.support.seeds import command, listing, printed_checkpoint, workspace


@pytest.fixture
def ws(tmp_path, store_url):
    ws = workspace(tmp_path, store_url, "checkpoints")
    if ws.root == "checkpoints":  # the seed's /path/to/checkpoints is absolute
        return type(ws)(ws.cwd, str(ws.cwd / "checkpoints"), ws.url)
    return ws


def test_checkpoint_dir_saves_and_a_model_file_path_resumes(ws):
    first = command(ws, "train", "task=Pendulum-v1", f"checkpoint_dir={ws.root}", steps=5)
    assert first.returncode == 0, first.stdout
    assert printed_checkpoint(first.stdout) == ws.checkpoint_url(5)
    assert rewind.list_checkpoints(checkpoint_dir=ws.root) == [ws.checkpoint_url(5)]

    # the model file inside the checkpoint, as seed 000 names model_50000.pt; no checkpoint_dir repeated
    second = command(ws, "train", "task=Pendulum-v1", f"resume_from_checkpoint={ws.checkpoint(5)}/trainer.pt", steps=10)
    assert second.returncode == 0, second.stdout
    assert f"resuming {ws.checkpoint_url(5)} at step 5" in second.stdout
    assert printed_checkpoint(second.stdout) == ws.checkpoint_url(10)

    third = command(ws, "train", "task=Pendulum-v1", f"checkpoint_dir={ws.root}",
                f"resume_from_checkpoint={ws.checkpoint(10)}/trainer.pt", steps=15)
    assert third.returncode == 0, third.stdout
    assert f"resuming {ws.checkpoint_url(10)} at step 10" in third.stdout
    found = rewind.list_checkpoints(checkpoint_dir=ws.root, agent_id="tdmpc2", run_id="pendulum-v1-seed1")
    assert found == [ws.checkpoint_url(step) for step in (5, 10, 15)]


def test_a_model_file_the_checkpoint_does_not_have_is_refused_and_nothing_is_written(ws):
    assert command(ws, "train", "task=Pendulum-v1", f"checkpoint_dir={ws.root}", steps=5).returncode == 0
    before = listing(ws)
    wrong = command(ws, "train", "task=Pendulum-v1", f"resume_from_checkpoint={ws.checkpoint(5)}/model_50000.pt",
                steps=10)
    assert wrong.returncode == 1, wrong.stdout
    [error] = [line for line in wrong.stdout.splitlines() if line.startswith("rewind: error:")]
    assert "model_50000.pt" in error
    assert "no such file or folder" in error or "does not have (files: " in error  # file:// here, S3 at the service
    assert listing(ws) == before
    assert rewind.list_checkpoints(checkpoint_dir=ws.root) == [ws.checkpoint_url(5)]


def test_paths_outside_the_named_store_are_refused_one_line_each_and_nothing_is_written(tmp_path):
    ws = workspace(tmp_path, f"file://{tmp_path}/unused", "checkpoints")
    other = ws.cwd / "other"
    for store in (ws.root, "other"):
        assert command(ws, "train", "task=Pendulum-v1", f"checkpoint_dir={store}", steps=5).returncode == 0
    elsewhere = other / "tdmpc2" / "pendulum-v1-seed1" / "step-0000000005"
    (ws.cwd / ws.root / "tdmpc2" / "pendulum-v1-seed1" / "step-0000000007").symlink_to(elsewhere)
    before = sorted(str(p) for p in ws.cwd.rglob("*"))
    cases = {f"{elsewhere}/trainer.pt": "is not in this service's store",  # a checkpoint of another store
             f"{ws.root}/tdmpc2/pendulum-v1-seed1/step-0000000007": "is not in this service's store",  # symlink out
             f"{ws.root}/tdmpc2/pendulum-v1-seed1": "no step-<N> folder is on its path",  # not a checkpoint
             f"{ws.root}/tdmpc2/pendulum-v1-seed1/step-0000000009": "there is no such file or folder"}
    for path, error in cases.items():
        refused = command(ws, "train", "task=Pendulum-v1", f"checkpoint_dir={ws.root}",
                          f"resume_from_checkpoint={path}", steps=10)
        assert refused.returncode == 1, refused.stdout
        [line] = [line for line in refused.stdout.splitlines() if line.startswith("rewind: error:")]
        assert error in line and "Traceback" not in refused.stdout, (path, refused.stdout)
    assert sorted(str(p) for p in ws.cwd.rglob("*")) == before
