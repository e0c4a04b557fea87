"""The checkpoint service end to end, on file:// and on a real S3 server."""

from __future__ import annotations

import hashlib
import json
import os

import grpc
import pytest
import torch

from rewind import BufferClient, CheckpointClient, buffer_source
from rewind.channel import make_channel
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from rewind_checkpoint.store import open_store
from tests.support.configs import SMALL, checkpoint_config
from tests.support.episodes import episode


def files_for(step: int) -> dict[str, bytes]:
    """Deterministic, distinct contents per step."""
    g = torch.Generator().manual_seed(step)
    return {
        "model.pt": torch.randint(0, 256, (70_000,), generator=g, dtype=torch.uint8).numpy().tobytes(),
        "optim.pt": f"optimizer state at {step}".encode(),
        "empty.bin": b"",
    }


def raw(ckpt_host):
    """The service's store, for looking behind its back."""
    catalog = ckpt_host.bindings[0].servicer.catalog
    return catalog, open_store(catalog.store.url, create=False)


def save(ckpt, step, run="run-1", **kwargs):
    return ckpt.save("agent", run, step, files_for(step), episode=step // 10, **kwargs)


# -- the happy path -----------------------------------------------------------


def test_save_list_lookup_download_roundtrip(ckpt, tmp_path):
    saved = save(ckpt, 1000, metrics={"eval_return": -180.5}, config={"lr": 3e-4, "task": "pendulum"},
                 extra={"note": "first"})
    c = saved.checkpoint
    assert c.path.endswith("/agent/run-1/step-0000001000")
    assert (c.step, c.episode) == (1000, 100)
    expected = files_for(1000)
    assert {f.name: (f.size, f.sha256) for f in c.files} == {
        n: (len(d), hashlib.sha256(d).hexdigest()) for n, d in expected.items()}
    assert c.total_bytes == sum(len(d) for d in expected.values())
    assert dict(c.metrics) == {"eval_return": -180.5}

    [listed] = ckpt.list("agent", "run-1")
    assert listed == c
    [run] = ckpt.list_runs()
    assert (run.agent_id, run.run_id, run.checkpoints, run.latest_step) == ("agent", "run-1", 1, 1000)

    found = ckpt.lookup("agent", "run-1", "latest")
    assert found.checkpoint == c and found.skipped == ()
    assert ckpt.lookup(which=c.path).checkpoint == c
    assert ckpt.lookup("agent", "run-1", 1000).checkpoint == c

    got = ckpt.download(c.path, tmp_path / "out")
    assert got == c
    for name, data in expected.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert ckpt.read(c, "optim.pt") == expected["optim.pt"]
    assert sorted(os.listdir(tmp_path / "out")) == sorted(expected)  # no temporary files left


def test_manifest_is_browsable_json_written_with_the_files(ckpt, ckpt_host):
    save(ckpt, 5, config={"batch_size": 256}, extra={"rng": [1, 2]}, resumed_from="")
    catalog, store = raw(ckpt_host)
    keys = [o.key for o in store.list("agent/run-1/")]
    assert keys == sorted(["agent/run-1/step-0000000005/" + n for n in (*files_for(5), "manifest.json")])
    manifest = json.loads(store.get("agent/run-1/step-0000000005/manifest.json"))
    assert manifest["format"] == "rewind.checkpoint/1"
    assert (manifest["agent_id"], manifest["run_id"], manifest["step"], manifest["episode"]) == ("agent", "run-1", 5, 0)
    assert manifest["config"] == {"batch_size": 256} and manifest["extra"] == {"rng": [1, 2]}
    assert manifest["created"].endswith("Z")
    assert {f["name"] for f in manifest["files"]} == set(files_for(5))


def test_resumed_from_is_recorded(ckpt):
    first = save(ckpt, 100).checkpoint
    second = ckpt.save("agent", "run-2", 200, {"m": b"x"}, resumed_from=first.path).checkpoint
    assert second.resumed_from == first.path
    with pytest.raises(InvalidArgument, match="resumed_from|path"):
        ckpt.save("agent", "run-2", 300, {"m": b"x"}, resumed_from="s3://elsewhere/a/b/step-0000000001")


def test_committed_step_cannot_be_overwritten(ckpt, tmp_path):
    save(ckpt, 10)
    with pytest.raises(AlreadyExists, match="already committed"):
        ckpt.save("agent", "run-1", 10, {"model.pt": b"different"})
    ckpt.download("agent/run-1/step-0000000010", tmp_path)
    assert (tmp_path / "model.pt").read_bytes() == files_for(10)["model.pt"]


def test_delete(ckpt):
    save(ckpt, 1)
    save(ckpt, 2)
    assert ckpt.delete("agent/run-1/1").endswith("step-0000000001")
    assert [c.step for c in ckpt.list("agent", "run-1")] == [2]
    with pytest.raises(NotFound, match="step"):
        ckpt.delete("agent/run-1/1")


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(("agent", "run", "field"), [
    ("..", "r", "agent_id"), ("a", "../../etc", "run_id"), ("a", "x/y", "run_id"), ("", "r", "agent_id"),
    ("a", "", "run_id"), ("a", "r\x00", "run_id"), ("a", "r\n", "run_id"), ("a" * 200, "r", "agent_id"),
])
def test_traversal_and_bad_ids_are_invalid_argument(ckpt, ckpt_host, agent, run, field):
    _, store = raw(ckpt_host)
    with pytest.raises(InvalidArgument, match=field):
        ckpt.save(agent, run, 1, {"f": b"x"})
    for call in (lambda: ckpt.list(agent, run), lambda: ckpt.lookup(agent, run, "latest"),
                 lambda: ckpt.get_retention(agent, run), lambda: ckpt.set_retention(agent, run, keep_last=1)):
        with pytest.raises(InvalidArgument, match=field):
            call()
    assert store.list("") == []


@pytest.mark.parametrize("name", ["../x", "manifest.json", "a/b", ""])
def test_bad_file_names_are_invalid_argument(ckpt, ckpt_host, name):
    _, store = raw(ckpt_host)
    with pytest.raises(InvalidArgument, match="name"):
        ckpt.save("agent", "run-1", 1, {name: b"x"})
    assert store.list("") == []


def test_unknown_run_and_step_are_not_found(ckpt):
    with pytest.raises(NotFound, match="run_id"):
        ckpt.list("agent", "nope")
    with pytest.raises(NotFound, match="run_id"):
        ckpt.lookup("agent", "nope", "latest")
    save(ckpt, 10)
    with pytest.raises(NotFound, match=r"step.*committed steps: 10"):
        ckpt.lookup("agent", "run-1", 11)
    with pytest.raises(NotFound, match="step"):
        ckpt.download("agent/run-1/step-0000000011", "unused")
    with pytest.raises(NotFound, match="file"):
        ckpt.read("agent/run-1/10", "nope.bin")
    with pytest.raises(NotFound, match="agent_id"):
        ckpt.list_runs("ghost")


def _stub(ckpt_host):
    channel = make_channel(ckpt_host.address)
    return channel, checkpoint_pb2_grpc.CheckpointServiceStub(channel)


def _header(**kw):
    base = dict(agent_id="agent", run_id="run-1", step=7,
                files=[checkpoint_pb2.FileAnnouncement(name="a.bin", size=4)])
    return checkpoint_pb2.SaveRequest(header=checkpoint_pb2.SaveHeader(**{**base, **kw}))


def _chunk(data, name="a.bin"):
    return checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file=name, data=data))


def _commit(**digests):
    return checkpoint_pb2.SaveRequest(commit=checkpoint_pb2.Commit(
        files=[checkpoint_pb2.FileInfo(name=n, sha256=d) for n, d in digests.items()]))


GOOD = hashlib.sha256(b"abcd").hexdigest()


@pytest.mark.parametrize(("stream", "message"), [
    ([_header(), _chunk(b"abcd")], "without a Commit"),
    ([_header(), _chunk(b"abc"), _commit(**{"a.bin": hashlib.sha256(b"abc").hexdigest()})], "not the 4 announced"),
    ([_header(), _chunk(b"abcde")], "longer than"),
    ([_header(), _chunk(b"abcd"), _commit(**{"a.bin": hashlib.sha256(b"abce").hexdigest()})], "damaged"),
    ([_header(), _chunk(b"abcd"), _commit()], "must list every file"),
    ([_header(), _chunk(b"x", name="b.bin")], "not announced"),
    ([_chunk(b"abcd")], "first message must be a SaveHeader"),
    ([_header(), _header()], "sent twice"),
    ([_header(), _chunk(b"abcd"), _commit(**{"a.bin": GOOD}), _chunk(b"x")], "last message"),
    ([_header(files=[checkpoint_pb2.FileAnnouncement(name="a.bin", size=1)] * 2)], "announced twice"),
    ([_header(step=-1)], "step"),
    ([_header(episode=-5)], "episode"),
    ([_header(retention=checkpoint_pb2.RetentionPolicy(keep_best=2))], "retention.metric"),
    ([_header(versions={"numpy": "2.0"})], "versions: unknown key 'numpy'"),
    ([_header(versions={"snapshot_format": "1"})], "versions: unknown key 'snapshot_format'"),
    ([_header(versions={"torch": "2" * 65})], "versions['torch']"),
    ([_header(versions={"torch": "2.13\x00"})], "printable"),
    ([], "no messages"),
])
def test_a_bad_upload_is_rejected_and_leaves_nothing(ckpt_host, ckpt, stream, message):
    save(ckpt, 1)  # something committed, which must stay as it was
    catalog, store = raw(ckpt_host)
    before = [(o.key, o.size) for o in store.list("")]
    channel, stub = _stub(ckpt_host)
    with pytest.raises(grpc.RpcError) as info:
        stub.Save(iter(stream), timeout=10)
    channel.close()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()
    assert [(o.key, o.size) for o in store.list("")] == before
    assert catalog.active_uploads == set()


def test_protocol_errors_name_the_problem_through_the_sdk(ckpt):
    with pytest.raises(InvalidArgument, match="retention.mode"):
        ckpt.save("agent", "run-1", 1, {"a": b"x"}, retention={"keep_last": 2, "mode": "median"})


# -- integrity ----------------------------------------------------------------


def _corrupt(store, key: str) -> None:
    """Flip a byte of a stored object, behind the service's back (same size)."""
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    store.put(key, bytes(data))


def test_corrupt_file_is_data_loss_and_latest_falls_back(ckpt, ckpt_host, tmp_path):
    _, store = raw(ckpt_host)
    for step in (1, 2, 3):
        save(ckpt, step)
    _corrupt(store, "agent/run-1/step-0000000003/model.pt")

    with pytest.raises(DataLoss, match=r"model\.pt.*sha256"):
        ckpt.download("agent/run-1/3", tmp_path / "out")
    assert not (tmp_path / "out" / "model.pt").exists()  # never a damaged file under its real name
    with pytest.raises(DataLoss, match=r"model\.pt"):
        ckpt.lookup("agent", "run-1", 3)

    found = ckpt.lookup("agent", "run-1", "latest")
    assert found.checkpoint.step == 2
    [(path, reason)] = found.skipped
    assert path.endswith("step-0000000003") and "model.pt" in reason
    # Unverified lookups only compare sizes, which still match.
    assert ckpt.lookup("agent", "run-1", "latest", verify=False).checkpoint.step == 3


def test_truncated_or_missing_file_is_caught_without_reading(ckpt, ckpt_host):
    _, store = raw(ckpt_host)
    save(ckpt, 1)
    save(ckpt, 2)
    store.put("agent/run-1/step-0000000002/model.pt", b"short")
    store.delete(["agent/run-1/step-0000000001/optim.pt"])
    with pytest.raises(DataLoss, match="every checkpoint"):
        ckpt.lookup("agent", "run-1", "latest", verify=False)


def test_best_lookup(ckpt):
    for step, ret in ((1, -300.0), (2, -150.0), (3, -200.0)):
        save(ckpt, step, metrics={"eval_return": ret, "loss": -ret})
    assert ckpt.lookup("agent", "run-1", "best", metric="eval_return").checkpoint.step == 2
    assert ckpt.lookup("agent", "run-1", "best", metric="eval_return", mode="min").checkpoint.step == 1
    with pytest.raises(InvalidArgument, match="best.metric"):
        ckpt.lookup("agent", "run-1", "best")
    ckpt.set_retention("agent", "run-1", keep_last=3, metric="loss", mode="min")
    assert ckpt.lookup("agent", "run-1", "best").checkpoint.step == 2
    with pytest.raises(NotFound, match="metrics present: eval_return, loss"):
        ckpt.lookup("agent", "run-1", "best", metric="success")


# -- retention ----------------------------------------------------------------


def steps(ckpt, run="run-1"):
    return [c.step for c in ckpt.list("agent", run)]


def test_keep_last_default_is_three_applied_after_each_commit(ckpt):
    deleted = [save(ckpt, s).deleted for s in range(1, 6)]
    assert steps(ckpt) == [3, 4, 5]
    assert [len(d) for d in deleted] == [0, 0, 0, 1, 1]
    assert deleted[3][0].endswith("step-0000000001")
    policy = ckpt.get_retention("agent", "run-1")
    assert (policy.keep_last, policy.keep_every, policy.keep_best) == (3, 0, 0)


def test_set_retention_waits_for_the_next_commit(ckpt):
    for s in range(1, 4):
        save(ckpt, s)
    ckpt.set_retention("agent", "run-1", keep_last=1)
    assert steps(ckpt) == [1, 2, 3]  # nothing deleted yet
    save(ckpt, 4)
    assert steps(ckpt) == [4]


def test_every_rule_together(ckpt):
    ckpt.set_retention("agent", "run-1", keep_last=2, keep_every=4, keep_best=1, metric="ret", mode="max")
    rets = {1: 5.0, 2: 9.0, 3: 1.0, 4: 2.0, 5: 3.0, 6: 0.0, 7: 0.5, 8: 0.1, 9: 0.2}
    for s, r in rets.items():
        save(ckpt, s, metrics={"ret": r})
    # last two: 8, 9; every 4th: 4, 8; best: 2.
    assert steps(ckpt) == [2, 4, 8, 9]


def test_keep_last_zero_keeps_everything(ckpt):
    for s in range(1, 6):
        save(ckpt, s, retention={"keep_last": 0})
    assert steps(ckpt) == [1, 2, 3, 4, 5]


def test_retention_never_touches_uncommitted_uploads_or_other_runs(ckpt, ckpt_host):
    _, store = raw(ckpt_host)
    store.put("agent/run-1/step-0000000000/model.pt", b"staging of a crashed writer")
    save(ckpt, 1, run="other")
    for s in range(1, 6):
        save(ckpt, s, retention={"keep_last": 1})
    assert steps(ckpt) == [5]
    assert store.get("agent/run-1/step-0000000000/model.pt") == b"staging of a crashed writer"
    assert steps(ckpt, "other") == [1]


def test_retention_across_a_resume(store_url, tmp_path):
    """A run checkpoints, its service goes away, and a new service (and a resumed run) carry on."""
    from rewind_checkpoint.server import serve

    rets = iter([1.0, 8.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    host = serve(checkpoint_config(store_url))
    with CheckpointClient(host.address) as ckpt:
        for s in (10, 20, 30, 40):
            save(ckpt, s, metrics={"ret": next(rets)},
                 retention={"keep_last": 2, "keep_every": 30, "keep_best": 1, "metric": "ret"})
        assert steps(ckpt) == [20, 30, 40]
    host.stop(grace_s=0.5)

    host = serve(checkpoint_config(store_url))  # the policy lives in the store, not the process
    with CheckpointClient(host.address) as ckpt:
        latest = ckpt.lookup("agent", "run-1", "latest").checkpoint
        assert latest.step == 40
        # The same run resumes from an older checkpoint (30): its new commits are the "last" ones.
        for s in (35, 45):
            save(ckpt, s, metrics={"ret": next(rets)}, resumed_from=ckpt.lookup("agent", "run-1", 30).checkpoint.path)
        # last two: 35, 45; every 30th: 30; best (8.0): 20.
        assert steps(ckpt) == [20, 30, 35, 45]
        assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 45
        # A new run resumed from this one has its own (default) policy and leaves this run alone.
        for s in (50, 60, 70, 80):
            save(ckpt, s, run="run-1-resumed", resumed_from=latest.path)
        assert steps(ckpt, "run-1-resumed") == [60, 70, 80]
        assert steps(ckpt) == [20, 30, 35, 45]
    host.stop(grace_s=0.5)


# -- buffers straight from the buffer service ----------------------------------


def test_buffer_snapshots_go_into_the_checkpoint_and_restore_exactly(ckpt, service, tmp_path):
    buffer = BufferClient(service.address, "buffer")
    test_buffer = buffer.using("test_buffer")
    for eid in range(6):
        buffer.add(episode(eid, 40))
    test_buffer.add(episode(100, 30))
    saved = ckpt.save("agent", "run-1", 240, {"model.pt": b"weights"}, episode=6,
                      buffers=[buffer_source(service.address, "buffer", expect_episodes_added=6, blocks=False),
                               buffer_source(service.address, "test_buffer", blocks=False)])
    c = saved.checkpoint
    assert sorted(f.name for f in c.files) == ["buffer.snapshot", "model.pt", "test_buffer.snapshot"]
    assert [(b.buffer, b.file, b.episodes_added) for b in c.buffers] == [
        ("buffer", "buffer.snapshot", 6), ("test_buffer", "test_buffer.snapshot", 1)]
    expected = [buffer.sample() for _ in range(3)]

    # A fresh buffer service restored from the checkpoint samples exactly the same batches.
    from rewind_buffer.server import serve

    fresh = serve(SMALL.replace(port=0))
    try:
        restored = BufferClient(fresh.address, "buffer")
        restored.restore(ckpt.read(c, "buffer.snapshot"))
        for want in expected:
            for a, b in zip(restored.sample(), want, strict=True):
                assert torch.equal(a, b)
        stats = restored.using("test_buffer").restore(ckpt.read(c, "test_buffer.snapshot"))
        assert (stats.episodes, stats.transitions) == (1, 30)
    finally:
        fresh.stop(grace_s=0.5)


def test_manifest_records_versions_of_trainer_and_buffers(ckpt, ckpt_host, service):
    from rewind import versions

    buffer = BufferClient(service.address, "buffer")
    buffer.add(episode(0, 40))
    trainer = {**versions.current(), "torchrl": "0.14.0"}  # as a trainer with another patch release sends them
    c = ckpt.save("agent", "run-1", 40, {"model.pt": b"w"}, versions=trainer,
                  buffers=[(service.address, "buffer"),
                           buffer_source(service.address, "test_buffer", blocks=False)]).checkpoint
    # The plain pair saves blocks (format 2); a whole snapshot, asked for by name, is format 1.
    blocks = {**versions.current(), "snapshot_format": "2"}
    whole = {**versions.current(), "snapshot_format": "1"}
    assert dict(c.versions) == {**trainer, "checkpoint_format": "rewind.checkpoint/1"}
    assert [(b.format, dict(b.versions)) for b in c.buffers] == [("blocks", blocks), ("blob", whole)]
    # In manifest.json as written, and as every reader sees it.
    _, store = raw(ckpt_host)
    manifest = json.loads(store.get("agent/run-1/step-0000000040/manifest.json"))
    assert manifest["versions"] == dict(c.versions)
    assert [b["versions"] for b in manifest["buffers"]] == [blocks, whole]
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint == c
    assert buffer.versions() == {**versions.current(), "snapshot_format": str(max(versions.SNAPSHOT_FORMATS))}
    # By default the SDK records this process's versions.
    assert dict(ckpt.save("agent", "run-1", 41, {}).checkpoint.versions) == {
        **versions.current(), "checkpoint_format": "rewind.checkpoint/1"}


def test_a_manifest_written_before_version_records_still_reads_and_restores(ckpt, ckpt_host, service):
    buffer = BufferClient(service.address, "buffer")
    for eid in range(3):
        buffer.add(episode(eid, 40))
    ckpt.save("agent", "run-1", 120, {"model.pt": b"w"}, buffers=[(service.address, "buffer")])
    expected = buffer.sample()
    _, store = raw(ckpt_host)
    key = "agent/run-1/step-0000000120/manifest.json"
    old = json.loads(store.get(key))
    del old["versions"]
    for b in old["buffers"]:
        del b["versions"]
    store.put(key, json.dumps(old).encode())
    found = ckpt.lookup("agent", "run-1", "latest").checkpoint
    assert found.step == 120 and dict(found.versions) == {} and dict(found.buffers[0].versions) == {}
    buffer.add(episode(3, 40))
    [restored] = ckpt.restore_buffers(found)
    assert restored.episodes_added == 3
    for a, b in zip(buffer.sample(), expected, strict=True):
        assert torch.equal(a, b)


def test_a_buffer_that_moved_on_fails_the_save_and_leaves_nothing(ckpt, ckpt_host, service):
    _, store = raw(ckpt_host)
    buffer = BufferClient(service.address, "buffer")
    buffer.add(episode(0, 40))
    with pytest.raises(FailedPrecondition, match=r"buffers: 'buffer'.*has seen 1 episodes, not 2"):
        ckpt.save("agent", "run-1", 1, {"m": b"x"}, buffers=[buffer_source(service.address, "buffer",
                                                                           expect_episodes_added=2)])
    with pytest.raises(NotFound, match="unknown|no buffer|buffer"):
        ckpt.save("agent", "run-1", 1, {"m": b"x"}, buffers=[(service.address, "nope")])
    assert store.list("") == []


def test_an_unreachable_buffer_service_is_unavailable_naming_it(ckpt, ckpt_host):
    from rewind.errors import Unavailable

    _, store = raw(ckpt_host)
    with pytest.raises(Unavailable, match=r"127\.0\.0\.1:1"):
        ckpt.save("agent", "run-1", 1, {"m": b"x"}, buffers=[("127.0.0.1:1", "buffer")])
    assert ckpt.list_runs() == []


def test_a_file_rewritten_after_a_good_lookup_is_caught_on_the_next(ckpt, ckpt_host):
    _, store = raw(ckpt_host)
    save(ckpt, 1)
    save(ckpt, 2)
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 2  # verified, and remembered
    _corrupt(store, "agent/run-1/step-0000000002/optim.pt")
    found = ckpt.lookup("agent", "run-1", "latest")
    assert found.checkpoint.step == 1 and "optim.pt" in found.skipped[0][1]


def test_a_chunk_over_the_message_limit_is_resource_exhausted(ckpt_host, ckpt):
    _, store = raw(ckpt_host)
    channel = make_channel(ckpt_host.address, max_message_bytes=64 * 2**20)
    stub = checkpoint_pb2_grpc.CheckpointServiceStub(channel)
    big = b"x" * (9 * 2**20)  # the test service allows 8 MiB
    with pytest.raises(grpc.RpcError) as info:
        stub.Save(iter([_header(files=[checkpoint_pb2.FileAnnouncement(name="a.bin", size=len(big))]),
                        _chunk(big)]), timeout=10)
    channel.close()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert store.list("") == []


def test_restore_buffers_straight_from_the_checkpoint(ckpt, ckpt_host, service):
    _, store = raw(ckpt_host)
    buffer = BufferClient(service.address, "buffer")
    for eid in range(4):
        buffer.add(episode(eid, 40))
    c = ckpt.save("agent", "run-1", 160, {}, buffers=[(service.address, "buffer")]).checkpoint
    expected = buffer.sample()
    for eid in range(4, 8):
        buffer.add(episode(eid, 40))  # the run moves on ...

    [restored] = ckpt.restore_buffers(c)  # ... and is rewound to the checkpoint
    assert (restored.buffer, restored.episodes, restored.episodes_added) == ("buffer", 4, 4)
    for a, b in zip(buffer.sample(), expected, strict=True):
        assert torch.equal(a, b)

    # Into another buffer name; then a corrupt snapshot leaves the target untouched.
    with pytest.raises(NotFound, match="no snapshot of buffer 'copy'.*name the file"):
        ckpt.restore_buffers(c, [(service.address, "copy")])
    target = checkpoint_pb2.BufferTarget(address=service.address, buffer="copy", file="buffer.snapshot")
    [other] = ckpt.restore_buffers(c, [target])
    assert (other.buffer, other.file, other.transitions) == ("copy", "buffer.snapshot", 160)
    buffer.add(episode(9, 40))
    _corrupt(store, "agent/run-1/step-0000000160/buffer.snapshot")
    with pytest.raises(DataLoss, match=r"buffer\.snapshot"):
        ckpt.restore_buffers(c)
    assert buffer.stats().episodes_added == 5
    with pytest.raises(NotFound, match="no snapshot of buffer 'test_buffer'"):
        ckpt.restore_buffers(c, [(service.address, "test_buffer")])


def test_a_captured_buffer_is_saved_as_of_the_capture(ckpt, service):
    """The trainer's pattern: capture (a short copy), carry on, let the service pull the capture."""
    buffer = BufferClient(service.address, "buffer")
    for eid in range(5):
        buffer.add(episode(eid, 40))
    captured = buffer.capture(expect_episodes_added=5)
    assert (captured.episodes_added, captured.batches_sampled, captured.transitions) == (5, 0, 200)
    expected = [buffer.sample() for _ in range(2)]  # what a resumed run must sample next
    buffer.add(episode(5, 40))                       # the run moves on before the save
    c = ckpt.save("agent", "run-1", 200, {}, buffers=[
        buffer_source(service.address, "buffer", capture_id=captured.capture_id)]).checkpoint
    assert c.buffers[0].episodes_added == 5

    with pytest.raises(NotFound, match="capture_id"):  # a capture streams once
        ckpt.save("agent", "run-1", 201, {}, buffers=[
            buffer_source(service.address, "buffer", capture_id=captured.capture_id)])
    ckpt.restore_buffers(c)
    assert buffer.stats().episodes_added == 5
    for want in expected:
        for a, b in zip(buffer.sample(), want, strict=True):
            assert torch.equal(a, b)
