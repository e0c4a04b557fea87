"""Paths a user can see name their checkpoint: relative, absolute, file://, a file inside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rewind.checkpoint_paths import CheckpointLocation, locate_checkpoint
from rewind.errors import InvalidArgument
from rewind_trainer.api import placement
from rewind_trainer.settings import TrainSettings

STEP = "step-0000000200"


def store(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints" / "tdmpc2" / "run123" / STEP
    folder.mkdir(parents=True)
    (folder / "trainer.pt").write_bytes(b"x")
    return tmp_path / "checkpoints"


def test_every_local_spelling_names_the_same_checkpoint_and_its_store(tmp_path):
    root = store(tmp_path)
    expected = CheckpointLocation(f"file://{root}/tdmpc2/run123/{STEP}", f"file://{root}")
    for text in (f"checkpoints/tdmpc2/run123/{STEP}", f"./checkpoints/tdmpc2/run123/{STEP}",
                 f"{root}/tdmpc2/run123/{STEP}", f"file://{root}/tdmpc2/run123/{STEP}",
                 f"{root}/tdmpc2/run123/{STEP}/"):
        assert locate_checkpoint(text, cwd=tmp_path) == expected, text
    inside = locate_checkpoint(f"checkpoints/tdmpc2/run123/{STEP}/trainer.pt", cwd=tmp_path)
    assert inside == CheckpointLocation(f"{expected.url}/trainer.pt", expected.store)  # the service checks the file


def test_a_store_url_names_its_store():
    url = f"s3://bucket/prefix/tdmpc2/run123/{STEP}"
    assert locate_checkpoint(url) == CheckpointLocation(url, "s3://bucket/prefix")
    assert locate_checkpoint(url + "/trainer.pt") == CheckpointLocation(url + "/trainer.pt", "s3://bucket/prefix")
    assert locate_checkpoint(f"s3://bucket/tdmpc2/run123/{STEP}").store == "s3://bucket"
    assert locate_checkpoint(f"s3://bucket/run123/{STEP}") is None  # no agent folder: no store above it


def test_names_that_are_not_local_paths_stay_as_they_are(tmp_path):
    store(tmp_path)
    for text in ("latest", "best", f"tdmpc2/run123/{STEP}"):
        assert locate_checkpoint(text, cwd=tmp_path) is None, text  # the service's own forms
    assert locate_checkpoint("./checkpoints/tdmpc2/run123", cwd=tmp_path) is None  # no step folder on the way up


def test_a_symlink_is_judged_by_where_it_points(tmp_path):
    root = store(tmp_path)
    (tmp_path / "link").symlink_to(root / "tdmpc2" / "run123" / STEP)
    assert locate_checkpoint("./link", cwd=tmp_path).url == f"file://{root}/tdmpc2/run123/{STEP}"


def test_a_named_store_means_local_services_and_a_local_path_names_their_store(tmp_path, monkeypatch):
    root = store(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = placement(TrainSettings(checkpoint_dir=str(root)), {"checkpoint_dir"})
    assert settings.local_services and settings.store_url == f"file://{root}"
    path = f"checkpoints/tdmpc2/run123/{STEP}"
    settings = placement(TrainSettings(local_services=True, resume_from_checkpoint=path),
                         {"local_services", "resume_from_checkpoint"})
    assert settings.store_url == f"file://{root}"
    settings = placement(TrainSettings(local_services=True, out_dir="outputs/run"), {"local_services", "out_dir"})
    assert settings.store_url == f"file://{tmp_path}/outputs/run"  # seed 001: checkpoints in the output folder
    named = TrainSettings(resume_from_checkpoint=path, checkpoint_address="10.0.0.7:50052")
    assert placement(named, {"resume_from_checkpoint", "checkpoint_address"}) == named  # it resolves the path


def test_a_local_path_that_names_no_checkpoint_is_refused_before_anything_starts(tmp_path, monkeypatch):
    root = store(tmp_path)
    monkeypatch.chdir(tmp_path)
    cases = {"checkpoints/tdmpc2/run123": "no step-<N> folder is on its path",
             "./outputs/my_training_run/checkpoint-5000": "there is no such file or folder",
             f"{root}/tdmpc2/run123/{STEP}/model_50000.pt": "there is no such file or folder",
             f"{root}/tdmpc2/run123/step-0000000300": "there is no such file or folder"}
    for path, why in cases.items():
        with pytest.raises(InvalidArgument, match=f"resume_from_checkpoint: .* {why}"):
            placement(TrainSettings(resume_from_checkpoint=path), {"resume_from_checkpoint"})
    assert sorted(p.name for p in (root / "tdmpc2" / "run123").iterdir()) == [STEP]
