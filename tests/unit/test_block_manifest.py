"""Block references in manifest.json and in keys: what is read, what is refused, and where blocks live."""

from __future__ import annotations

import json

import pytest

from rewind.errors import DataLoss, InvalidArgument
from rewind_checkpoint.catalog import _staging_key
from rewind_checkpoint.layout import CheckpointKey, RunKey, check_digest, split_path
from rewind_checkpoint.manifest import BlockInfo, BufferEntry, FileEntry, Manifest

A, B = "a" * 64, "b" * 64


def _body(**buffer) -> dict:
    return {"format": "rewind.checkpoint/1", "agent_id": "a", "run_id": "r", "step": 5, "episode": 1,
            "created": "2026-01-01T00:00:00.000000Z", "files": [{"name": "i", "size": 1, "sha256": "0" * 64}],
            "buffers": [{"buffer": "buffer", "file": "i", "address": "h:1", "episodes_added": 3, **buffer}]}


def test_a_blocks_manifest_round_trips_to_json_and_proto():
    entry = BufferEntry("buffer", "i", "h:1", 3, {"snapshot_format": "2"}, format="blocks",
                        blocks=(BlockInfo(A, 10), BlockInfo(B, 0)))
    manifest = Manifest("a", "r", 5, 1, "2026-01-01T00:00:00.000000Z", (FileEntry("i", 1, "0" * 64),),
                        buffers=(entry,))
    again = Manifest.from_json(manifest.to_json(), "here")
    assert again == manifest and again.blocks == {A: 10, B: 0}
    [proto] = again.to_proto("p").buffers
    assert proto.format == "blocks" and [(b.sha256, b.size) for b in proto.blocks] == [(A, 10), (B, 0)]


def test_an_old_manifest_reads_as_blob_with_no_blocks():
    manifest = Manifest.from_json(json.dumps(_body()).encode(), "here")
    assert (manifest.buffers[0].format, manifest.buffers[0].blocks, manifest.blocks) == ("blob", (), {})
    assert manifest.to_proto("p").buffers[0].format == "blob"


@pytest.mark.parametrize(("buffer", "field"), [
    ({"format": "blocks", "blocks": [{"sha256": "../../x", "size": 1}]}, r"buffers\[0\]\.blocks\[0\]\.sha256"),
    ({"format": "blocks", "blocks": [{"sha256": A.upper(), "size": 1}]}, r"buffers\[0\]\.blocks\[0\]\.sha256"),
    ({"format": "blocks", "blocks": [{"sha256": A, "size": -1}]}, r"buffers\[0\]\.blocks\[0\]\.size"),
    ({"format": "blocks", "blocks": [{"size": 1}]}, "sha256"),
    ({"format": "shards"}, r"buffers\[0\]\.format"),
])
def test_a_bad_block_reference_makes_the_manifest_unreadable_naming_it(buffer, field):
    with pytest.raises(DataLoss, match=rf"here: manifest\.json is unreadable.*{field}"):
        Manifest.from_json(json.dumps(_body(**buffer)).encode(), "here")


def test_a_buffer_entry_that_is_not_an_object_is_data_loss():
    body = _body()
    body["buffers"] = [1]
    with pytest.raises(DataLoss, match=r"buffers\[0\]"):
        Manifest.from_json(json.dumps(body).encode(), "here")


def test_block_keys_stay_in_their_runs_blocks_folder():
    run = RunKey.checked("agent", "run-1")
    assert run.blocks_prefix == "agent/run-1/blocks/"
    assert run.block_key(A) == f"agent/run-1/blocks/{A}"
    for bad in ("../" + A[3:], A + "0", A[:-1] + "G", ""):
        with pytest.raises(InvalidArgument, match="block"):
            run.block_key(bad)
    with pytest.raises(DataLoss, match="index.blocks"):
        check_digest("x", "index.blocks", DataLoss)
    with pytest.raises(InvalidArgument, match="checkpoint path"):
        split_path(f"agent/run-1/blocks/{A}", "file:///s")  # a block is no checkpoint


def test_the_sweep_knows_multipart_uploads_of_steps_and_of_blocks_only():
    run = RunKey("agent", "run-1")
    assert _staging_key(f"agent/run-1/blocks/{A}") == (run, A)
    assert _staging_key("agent/run-1/step-0000000001/m.pt") == (run, CheckpointKey(run, 1))
    for other in (f"agent/run-1/blocks/{A}.tmp", f"agent/run-1/blocks/x/{A}", "agent/run-1/history/status.json",
                  f"agent/..r/blocks/{A}"):
        assert _staging_key(other) is None
