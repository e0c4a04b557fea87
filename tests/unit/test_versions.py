"""Version records: what rewind.versions.current() reads, and compare()'s rules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rewind import versions
from rewind_checkpoint.manifest import BufferEntry, FileEntry, Manifest
from tests.support.paths import REPO

RECORDED = {"python": "3.11.7", "torch": "2.13.0+cpu", "tensordict": "0.14.3", "torchrl": "0.14.1",
            "rewind": "0.1.0", "checkpoint_format": "rewind.checkpoint/1", "snapshot_format": "1"}


def running(**changes: str) -> dict[str, str]:
    return {**RECORDED, **changes}


def test_current_reads_every_package_without_importing_it():
    script = ("import sys, json\nfrom rewind import versions\n"
              "print(json.dumps([versions.current(), 'torch' in sys.modules, 'torchrl' in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    found, torch_loaded, torchrl_loaded = json.loads(result.stdout)
    assert tuple(found) == versions.PROCESS_KEYS
    assert not torch_loaded and not torchrl_loaded
    assert found["python"] == ".".join(map(str, sys.version_info[:3]))
    assert found["torchrl"].startswith("0.14") and found["rewind"] == __import__("rewind").__version__
    versions.check(found, "versions", versions.PROCESS_KEYS)  # what the SDK sends passes the service's check


def test_same_versions_are_compatible_and_say_nothing():
    assert versions.compare(RECORDED, running()) == ([], [])


def test_compare_names_each_incompatible_version():
    recorded = {**RECORDED, "torch": "1.13.1", "torchrl": "0.13.2", "tensordict": "0.13.0", "rewind": "0.2.0",
                "checkpoint_format": "rewind.checkpoint/2", "snapshot_format": "9"}
    incompatible, different = versions.compare(recorded, running(), "this trainer")
    assert different == []
    assert [m.split(" ", 1)[0] for m in incompatible] == [
        "torch", "tensordict", "torchrl", "rewind", "checkpoint_format", "snapshot_format"]
    by_key = {m.split(" ", 1)[0]: m for m in incompatible}
    assert by_key["torchrl"].startswith("torchrl 0.13.2, this trainer runs 0.14.1 (")
    assert "install torchrl 0.13.x or start a new run" in by_key["torchrl"]
    assert "install torch 1.x" in by_key["torch"]
    assert "install tensordict 0.13.x" in by_key["tensordict"]
    assert "newer Rewind" in by_key["rewind"]
    assert by_key["snapshot_format"].startswith("snapshot_format 9, this trainer reads 1")


def test_a_snapshot_format_newer_than_the_reader_reads_is_incompatible(monkeypatch):
    # A release that knows format 2, comparing against a buffer service that reads only 1.
    monkeypatch.setattr(versions, "SNAPSHOT_FORMATS", frozenset({1, 2}))
    incompatible, _ = versions.compare({**RECORDED, "snapshot_format": "2"}, running(snapshot_format="1"), "it")
    assert incompatible == ["snapshot_format 2, it reads 1 (a newer snapshot format than it restores; "
                            "upgrade it to this Rewind or start a new run)"]
    assert versions.compare({**RECORDED, "snapshot_format": "1"}, running(snapshot_format="2")) == ([], [])


def test_a_snapshot_format_this_release_does_not_know_is_incompatible():
    incompatible, _ = versions.compare({**RECORDED, "snapshot_format": "3"}, running(snapshot_format="2"), "it")
    assert incompatible == ["snapshot_format 3, it reads 2 (this Rewind reads snapshot formats 1, 2 only; "
                            "install the Rewind that wrote it or start a new run)"]


def test_patch_and_python_differences_are_compatible():
    recorded = {**RECORDED, "python": "3.12.4", "torch": "2.11.0+cu128", "torchrl": "0.14.0",
                "tensordict": "0.14.1", "rewind": "0.0.9"}
    incompatible, different = versions.compare(recorded, running(), "this trainer")
    assert incompatible == []
    assert different == ["python 3.12.4, this trainer runs 3.11.7", "torch 2.11.0+cu128, this trainer runs 2.13.0+cpu",
                         "tensordict 0.14.1, this trainer runs 0.14.3", "torchrl 0.14.0, this trainer runs 0.14.1",
                         "rewind 0.0.9, this trainer runs 0.1.0"]


def test_an_absent_package_or_an_unparsable_version_is_a_logged_difference():
    incompatible, different = versions.compare({**RECORDED, "torchrl": "absent", "torch": "nightly"}, running())
    assert incompatible == [] and len(different) == 2


def test_missing_records_are_compatible():
    assert versions.compare({}, running()) == ([], ["no version record (written before Rewind recorded versions)"])
    incompatible, different = versions.compare(RECORDED, {}, "the buffer service at b:1")
    assert incompatible == [] and different[0].startswith("the buffer service at b:1 reports no versions")
    # A key recorded on one side only: the other side is older or newer, and nothing can be judged.
    assert versions.compare({"python": "3.11.7"}, running()) == ([], [])
    assert versions.compare(RECORDED, {"python": "3.11.7"})[0] == []


@pytest.mark.parametrize("record, field", [
    ({"numpy": "2.0"}, "unknown key 'numpy'"),
    ({"torch": ""}, "1 to 64 printable"),
    ({"torch": "x" * 65}, "1 to 64 printable"),
    ({"torch": "2.13\n"}, "1 to 64 printable"),
])
def test_check_refuses_unknown_keys_and_bad_values(record, field):
    with pytest.raises(ValueError, match=field) as info:
        versions.check(record, "versions")
    assert str(info.value).startswith("versions")


def test_a_manifest_without_versions_reads_and_unknown_buffer_keys_are_ignored():
    old = {"format": "rewind.checkpoint/1", "agent_id": "a", "run_id": "r", "step": 5, "episode": 1,
           "created": "2026-01-01T00:00:00.000000Z", "files": [{"name": "m", "size": 1, "sha256": "0" * 64}],
           "buffers": [{"buffer": "buffer", "file": "buffer.snapshot", "address": "h:1", "episodes_added": 3,
                        "compression": "zstd", "shards": [{"x": 1}]}]}
    manifest = Manifest.from_json(json.dumps(old).encode(), "here")
    assert manifest.versions == {} and manifest.buffers[0].versions == {}
    assert manifest.buffers[0] == BufferEntry("buffer", "buffer.snapshot", "h:1", 3)  # and its format is "blob"
    assert dict(manifest.to_proto("p").versions) == {}


def test_a_manifest_round_trips_its_versions():
    manifest = Manifest("a", "r", 5, 1, "2026-01-01T00:00:00.000000Z", (FileEntry("m", 1, "0" * 64),),
                        buffers=(BufferEntry("buffer", "buffer.snapshot", "h:1", 3, {"torchrl": "0.14.1"}),),
                        versions=dict(RECORDED))
    again = Manifest.from_json(manifest.to_json(), "here")
    assert again == manifest
    proto = again.to_proto("p")
    assert dict(proto.versions) == RECORDED and dict(proto.buffers[0].versions) == {"torchrl": "0.14.1"}
