"""Paths a user can see name their checkpoint: relative, absolute, file://, a file inside it."""

from __future__ import annotations

from pathlib import Path

from rewind.checkpoint_paths import LocalCheckpoint, local_checkpoint
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
    expected = LocalCheckpoint(f"file://{root}/tdmpc2/run123/{STEP}", f"file://{root}")
    for text in (f"checkpoints/tdmpc2/run123/{STEP}", f"./checkpoints/tdmpc2/run123/{STEP}",
                 f"{root}/tdmpc2/run123/{STEP}", f"file://{root}/tdmpc2/run123/{STEP}",
                 f"checkpoints/tdmpc2/run123/{STEP}/trainer.pt", f"{root}/tdmpc2/run123/{STEP}/"):
        assert local_checkpoint(text, cwd=tmp_path) == expected, text


def test_names_that_are_not_local_paths_stay_as_they_are(tmp_path):
    store(tmp_path)
    for text in ("latest", "best", f"tdmpc2/run123/{STEP}", "s3://bucket/prefix/tdmpc2/run123/" + STEP):
        assert local_checkpoint(text, cwd=tmp_path) is None, text  # the service's own forms
    assert local_checkpoint("./checkpoints/tdmpc2/run123", cwd=tmp_path) is None  # no step folder on the way up


def test_a_symlink_is_judged_by_where_it_points(tmp_path):
    root = store(tmp_path)
    (tmp_path / "link").symlink_to(root / "tdmpc2" / "run123" / STEP)
    assert local_checkpoint("./link", cwd=tmp_path).url == f"file://{root}/tdmpc2/run123/{STEP}"


def test_a_named_store_means_local_services_and_a_local_path_names_their_store(tmp_path, monkeypatch):
    root = store(tmp_path)
    monkeypatch.chdir(tmp_path)
    settings = placement(TrainSettings(checkpoint_dir=str(root)), {"checkpoint_dir"})
    assert settings.local_services and settings.store_url == f"file://{root}"
    path = f"checkpoints/tdmpc2/run123/{STEP}"
    settings = placement(TrainSettings(local_services=True, resume_from_checkpoint=path),
                         {"local_services", "resume_from_checkpoint"})
    assert settings.store_url == f"file://{root}"
    untouched = TrainSettings(resume_from_checkpoint=path)  # a running service: it resolves the path itself
    assert placement(untouched, {"resume_from_checkpoint"}) == untouched
