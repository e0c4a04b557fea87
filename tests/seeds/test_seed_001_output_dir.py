"""Seed 001 (checkpoints in the output directory), its usages as written:

    python src/train.py --output_dir ./outputs/my_training_run --dataset_id ISdept/piper_arm
    python src/train.py --output_dir ./outputs/my_training_run --dataset_id ISdept/piper_arm \\
        --resume_from_checkpoint ./outputs/my_training_run/checkpoint-5000
    train(output_dir='./outputs/my_training_run', dataset_id='ISdept/piper_arm')
    train(output_dir='./outputs/my_training_run', dataset_id='ISdept/piper_arm',
          resume_from_checkpoint='./outputs/my_training_run/checkpoint-5000')

Rewind's names: `rewind train` and `rewind.train`, `--task Pendulum-v1` for the dataset,
`<output_dir>/<agent_id>/<run_id>/step-N` for `<output_dir>/checkpoint-N`.
"""

from __future__ import annotations

import pytest

import rewind
from tests.support.processes import ServiceProcess
from tests.support.seeds import QUICK, RUN, command, printed_checkpoint, workspace
from tests.support.trainer import AGENT

OUT = "./outputs/my_training_run"


def test_the_output_dir_holds_the_checkpoints_and_a_path_in_it_resumes(tmp_path):
    ws = workspace(tmp_path, f"file://{tmp_path}/unused", "outputs/my_training_run")
    first = command(ws, "train", "--output_dir", OUT, "--task", "Pendulum-v1", steps=5)
    assert first.returncode == 0, first.stdout
    assert printed_checkpoint(first.stdout) == ws.checkpoint_url(5)
    run_dir = ws.cwd / "outputs" / "my_training_run" / RUN
    assert {"step-0000000005", "metrics.csv"} <= {p.name for p in run_dir.iterdir()}

    second = command(ws, "train", "--output_dir", OUT, "--task", "Pendulum-v1",
                     "--resume_from_checkpoint", f"{OUT}/{RUN}/step-0000000005", steps=10)
    assert second.returncode == 0, second.stdout
    assert f"resuming {ws.checkpoint_url(5)} at step 5" in second.stdout
    assert printed_checkpoint(second.stdout) == ws.checkpoint_url(10)
    assert sorted(p.name for p in run_dir.glob("step-*")) == ["step-0000000005", "step-0000000010"]


def test_against_running_services_the_output_dir_path_resolves_in_their_store(tmp_path, store_url):
    """The services run on their own (as in compose); their addresses come from REWIND_* variables."""
    ws = workspace(tmp_path, store_url, "outputs/my_training_run")
    buffer = ServiceProcess(tmp_path, group="buffer")
    ckpt = ServiceProcess(tmp_path, "--store", ws.url, group="ckpt")
    addresses = {"REWIND_BUFFER_ADDRESS": buffer.address, "REWIND_CHECKPOINT_ADDRESS": ckpt.address}
    try:
        first = command(ws, "train", "--output_dir", OUT, "--task", "Pendulum-v1", steps=5, **addresses)
        assert first.returncode == 0, first.stdout
        assert "starting local services" not in first.stdout
        path = ws.checkpoint(5) if store_url.startswith("s3://") else f"{OUT}/{RUN}/step-0000000005"
        second = command(ws, "train", "--output_dir", OUT, "--task", "Pendulum-v1",
                         "--resume_from_checkpoint", path, steps=10, **addresses)
        assert second.returncode == 0, second.stdout
        assert f"resuming {ws.checkpoint_url(5)} at step 5" in second.stdout
        # the service's own form, <agent>/<run>/step-N, and its full URL name the same store's checkpoints
        third = command(ws, "train", "--output_dir", OUT, "--resume_from_checkpoint", f"{RUN}/step-0000000010",
                        steps=15, **addresses)
        assert f"resuming {ws.checkpoint_url(10)} at step 10" in third.stdout, third.stdout
        fourth = command(ws, "train", "--resume_from_checkpoint", ws.checkpoint_url(15), steps=20, **addresses)
        assert f"resuming {ws.checkpoint_url(15)} at step 15" in fourth.stdout, fourth.stdout
        assert rewind.list_checkpoints(checkpoint_dir=ws.url) == [ws.checkpoint_url(s) for s in (10, 15, 20)]
    finally:
        buffer.stop()
        ckpt.stop()


def test_the_train_function_takes_output_dir_and_a_relative_checkpoint_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = dict(model_size="tiny", seed_steps=1000, eval_episodes=0, port=-1, progress=False, torch_threads=1,
                 agent=AGENT)
    assert set(quick) == {name.removeprefix("REWIND_").lower() for name in QUICK}  # the same quick settings

    first = rewind.train(output_dir=OUT, task="Pendulum-v1", steps=5, **quick)
    assert (first.step, first.checkpoint) == (5, f"file://{tmp_path}/outputs/my_training_run/{RUN}/step-0000000005")
    second = rewind.train(output_dir=OUT, task="Pendulum-v1", steps=10,
                          resume_from_checkpoint=f"{OUT}/{RUN}/step-0000000005", **quick)
    assert (second.step, second.resumed_from) == (10, first.checkpoint)
    with pytest.raises(rewind.errors.InvalidArgument, match="checkpoint-5000 is not a checkpoint: there is no such"):
        rewind.train(output_dir=OUT, task="Pendulum-v1", resume_from_checkpoint=f"{OUT}/checkpoint-5000", **quick)
