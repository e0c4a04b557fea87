"""Opening stores by URL, id validation and retention rules.

What every store backend must do (put/get, listing, writers, deletes, presigning, outages) is the
conformance suite, tests/service/test_store_conformance.py.
"""

from __future__ import annotations

import pytest

from rewind.errors import InvalidArgument, NotFound
from rewind_checkpoint.layout import CheckpointKey, check_file_name, check_id, parse_path
from rewind_checkpoint.manifest import FileEntry, Manifest
from rewind_checkpoint.retention import RetentionPolicy, rank_best, to_delete
from rewind_checkpoint.store import FileStore, ObjectMissing, open_store


def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("").url == f"file://{tmp_path}/rewind-data"
    assert open_store("file://./rel").url == f"file://{tmp_path}/rel"
    assert open_store(f"file://{tmp_path}/abs").url == f"file://{tmp_path}/abs"
    assert isinstance(open_store(str(tmp_path / "plain")), FileStore)
    with pytest.raises(InvalidArgument, match="unsupported"):
        open_store("gs://bucket/x")
    with pytest.raises(InvalidArgument, match="bucket"):
        open_store("s3://")


def test_missing_bucket_is_a_clear_error(s3):
    from rewind.errors import FailedPrecondition

    store = open_store("s3://no-such-bucket-here/x", timeout_s=2.0, retries=1)
    with pytest.raises(FailedPrecondition, match="no-such-bucket-here.*does not exist"):
        store.check()


# -- ids ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "a\\b", "a\x00b", "a\nb", "-x", ".hidden",
                                 "a..b", "x" * 129, "é"])
def test_bad_ids_are_rejected(bad):
    with pytest.raises(InvalidArgument, match="run_id"):
        check_id(bad, "run_id")


@pytest.mark.parametrize("good", ["run-1", "550e8400-e29b-41d4-a716-446655440000", "PPO_agent.v2", "x" * 100])
def test_good_ids_pass(good):
    assert check_id(good, "run_id") == good


def test_reserved_file_names():
    with pytest.raises(InvalidArgument, match="reserved"):
        check_file_name("manifest.json")


def test_parse_path():
    url = "s3://bucket/rewind"
    key = CheckpointKey.checked("agent", "run", 1000)
    assert parse_path("s3://bucket/rewind/agent/run/step-0000001000", url) == key
    assert parse_path("s3://bucket/rewind/agent/run/step-0000001000/manifest.json", url) == key
    assert parse_path("agent/run/step-0000001000/", url) == key
    assert parse_path("agent/run/1000", url) == key
    with pytest.raises(InvalidArgument, match="not in this service's store"):
        parse_path("s3://other/rewind/agent/run/step-0000001000", url)
    with pytest.raises(InvalidArgument, match="agent_id"):
        parse_path("../run/step-0000001000", url)
    with pytest.raises(InvalidArgument, match="checkpoint path"):
        parse_path("agent/run/step-0000001000/../../x", url)


# -- retention rules -----------------------------------------------------------


def _manifest(step: int, order: int, **metrics: float) -> Manifest:
    return Manifest("a", "r", step, 0, f"2026-01-01T00:00:{order:02d}.000000Z", (FileEntry("f", 1, "0" * 64),),
                    metrics=metrics)


def _kept(manifests, policy):
    doomed = {m.step for m in to_delete(manifests, policy)}
    return sorted(m.step for m in manifests if m.step not in doomed)


def test_keep_last_counts_commits_not_steps():
    # A run resumed from step 200 after reaching 400: the new 300 is newer than the old 400.
    ms = [_manifest(100, 1), _manifest(200, 2), _manifest(400, 3), _manifest(300, 4)]
    assert _kept(ms, RetentionPolicy(keep_last=2)) == [300, 400]
    assert _kept(ms, RetentionPolicy(keep_last=3)) == [200, 300, 400]
    assert _kept(ms, RetentionPolicy(keep_last=0)) == [100, 200, 300, 400]


def test_keep_every_and_best_add_to_keep_last():
    ms = [_manifest(s, i, ret=r) for i, (s, r) in enumerate([(10, 5.0), (20, 9.0), (30, 1.0), (40, 2.0),
                                                             (50, 3.0), (60, 0.5)])]
    assert _kept(ms, RetentionPolicy(keep_last=1, keep_every=20)) == [20, 40, 60]
    assert _kept(ms, RetentionPolicy(keep_last=1, keep_best=2, metric="ret")) == [10, 20, 60]
    assert _kept(ms, RetentionPolicy(keep_last=1, keep_best=1, metric="ret", mode="min")) == [60]
    assert _kept(ms, RetentionPolicy(keep_last=2, keep_every=30, keep_best=1, metric="ret")) == [20, 30, 50, 60]


def test_best_ties_go_to_the_newer_commit_and_missing_metrics_never_rank():
    ms = [_manifest(10, 1, ret=1.0), _manifest(20, 2, ret=1.0), _manifest(30, 3)]
    assert [m.step for m in rank_best(ms, "ret", "max")] == [20, 10]


def test_bad_policies():
    with pytest.raises(InvalidArgument, match="retention.metric"):
        RetentionPolicy(keep_best=1)
    with pytest.raises(InvalidArgument, match="retention.mode"):
        RetentionPolicy(mode="median")
    with pytest.raises(InvalidArgument, match="retention.keep_last"):
        RetentionPolicy(keep_last=-1)


def test_object_missing_is_not_found():
    assert issubclass(ObjectMissing, NotFound)
