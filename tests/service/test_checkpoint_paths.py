"""Any path a user can see names its checkpoint: through a running service, and straight from the store."""

from __future__ import annotations

import pytest

import rewind
from rewind.errors import DataLoss, InvalidArgument, NotFound
from rewind_checkpoint.server import serve_in_process
from tests.support.configs import checkpoint_config


@pytest.fixture
def file_ckpt(tmp_path):
    root = tmp_path / "store"
    with serve_in_process(settings=checkpoint_config(f"file://{root}")) as client:
        client.save("tdmpc2", "run123", 200, {"trainer.pt": b"weights"})
        yield client, root


def test_a_file_store_takes_absolute_paths_file_urls_and_files_inside_a_checkpoint(file_ckpt):
    client, root = file_ckpt
    step = root / "tdmpc2" / "run123" / "step-0000000200"
    for path in (str(step), f"file://{step}", str(step / "trainer.pt"), str(step / "manifest.json"),
                 "tdmpc2/run123/step-0000000200", "tdmpc2/run123/200"):
        assert client.lookup(which=path).checkpoint.step == 200, path


def test_paths_that_name_no_checkpoint_are_refused_with_what_was_tried(file_ckpt, tmp_path):
    client, root = file_ckpt
    with pytest.raises(InvalidArgument, match="is not a checkpoint path; expected <agent_id>/<run_id>/step-<N>"):
        client.lookup(which=str(root / "tdmpc2" / "run123"))  # a folder, not a checkpoint
    with pytest.raises(NotFound, match=r"has no committed checkpoint \(committed steps: 200\)"):
        client.lookup(which=str(root / "tdmpc2" / "run123" / "step-0000000300"))  # a missing step
    other = tmp_path / "elsewhere" / "tdmpc2" / "run123" / "step-0000000200"
    other.mkdir(parents=True)
    with pytest.raises(InvalidArgument, match=f"is not in this service's store file://{root}"):
        client.lookup(which=str(other))  # a checkpoint-shaped folder in another store
    link = root / "tdmpc2" / "run123" / "step-0000000400"
    link.symlink_to(other)  # inside the store by name, outside it in fact
    with pytest.raises(InvalidArgument, match="is not in this service's store"):
        client.lookup(which=str(link))
    assert [c.step for c in client.list("tdmpc2", "run123")] == [200]  # nothing was written


def test_list_checkpoints_reads_the_store_with_no_service(store_url):
    with serve_in_process(settings=checkpoint_config(store_url)) as client:
        for step in (100, 200):
            client.save("ppo_agent", "run123", step, {"model.zip": b"m"})
        client.save("ppo_agent", "other", 100, {"model.zip": b"m"})
        paths = {c.step: c.path for c in client.list("ppo_agent", "run123")}
    found = rewind.list_checkpoints(checkpoint_dir=store_url, run_id="run123", agent_id="ppo_agent")
    assert found == [paths[100], paths[200]]
    assert len(rewind.list_checkpoints(checkpoint_dir=store_url)) == 3
    assert rewind.list_checkpoints(checkpoint_dir=store_url, run_id="other") == [paths[100].replace("run123", "other")]
    with pytest.raises(NotFound, match="no run ppo_agent/nope"):
        rewind.list_checkpoints(checkpoint_dir=store_url, run_id="nope", agent_id="ppo_agent")


def test_list_checkpoints_of_a_missing_folder_says_so(tmp_path):
    with pytest.raises(NotFound, match=f"checkpoint_dir: {tmp_path}/nope does not exist"):
        rewind.list_checkpoints(checkpoint_dir=str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


def test_a_corrupt_named_checkpoint_falls_back_to_the_newest_older_good_one_when_asked(file_ckpt):
    client, root = file_ckpt
    client.save("tdmpc2", "run123", 300, {"trainer.pt": b"newer"})
    newer = root / "tdmpc2" / "run123" / "step-0000000300"
    (newer / "trainer.pt").write_bytes(b"NEWER")  # same size, other bytes
    with pytest.raises(DataLoss, match="trainer.pt of tdmpc2/run123/step-0000000300 failed its sha256"):
        client.lookup(which=str(newer))
    found = client.lookup(which=str(newer), fall_back=True)
    assert found.checkpoint.step == 200
    assert [p for p, _ in found.skipped] == [f"file://{newer}"] and "sha256" in found.skipped[0][1]
    older = root / "tdmpc2" / "run123" / "step-0000000200"
    (older / "trainer.pt").write_bytes(b"WEIGHTS")
    with pytest.raises(DataLoss, match="every checkpoint of tdmpc2/run123/step-0000000300 failed verification"):
        client.lookup(which=str(newer), fall_back=True)
