"""Faults: the store going away mid-save, and the sweep of what crashed saves leave behind.

Each runs on file:// and on a real S3 server. Waits poll for a condition with a
deadline; none sleeps a fixed time. A killed uploader and a killed service (both
processes) are in tests/system/test_checkpoint_process.py.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import grpc
import pytest

from rewind.channel import make_channel
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.errors import Unavailable
from rewind_checkpoint.store import open_store
from tests.support.processes import wait_for

MiB = 2**20


def test_staging_sweep_respects_its_age(tmp_path):
    from rewind_checkpoint.catalog import Catalog

    store = open_store(f"file://{tmp_path}/store")
    store.put("agent/run-1/step-0000000001/model.pt", b"old crash")
    store.put("agent/run-1/step-0000000002/model.pt", b"recent crash")
    old = time.time() - 7200
    os.utime(store.path_of("agent/run-1/step-0000000001/model.pt"), (old, old))
    assert Catalog(store, staging_max_age_s=3600).clean_staging() == 1
    assert [o.key for o in store.list("")] == ["agent/run-1/step-0000000002/model.pt"]


class Outage:
    """Take the store away and bring it back: S3 hangs (SIGSTOP), a directory disappears."""

    def __init__(self, store_url: str, request) -> None:
        self.s3 = request.getfixturevalue("s3") if store_url.startswith("s3://") else None
        self.root = None if self.s3 else Path(store_url[len("file://"):])

    def begin(self) -> None:
        if self.s3:
            self.s3.pause()
        else:
            self.root.rename(self.root.with_name("away"))

    def end(self) -> None:
        if self.s3:
            self.s3.resume()
        elif not self.root.exists():
            self.root.with_name("away").rename(self.root)


def test_store_going_away_during_a_save(ckpt, ckpt_host, store_url, request, tmp_path):
    catalog = ckpt_host.bindings[0].servicer.catalog
    committed = ckpt.save("agent", "run-1", 1, {"model.pt": b"m" * (6 * MiB), "small": b"s"}).checkpoint
    outage = Outage(store_url, request)
    payload = os.urandom(8 * MiB)

    def requests():
        yield checkpoint_pb2.SaveRequest(header=checkpoint_pb2.SaveHeader(
            agent_id="agent", run_id="run-1", step=2,
            files=[checkpoint_pb2.FileAnnouncement(name="model.pt", size=len(payload))]))
        yield checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file="model.pt", data=payload[:3 * MiB]))
        outage.begin()
        for i in range(3 * MiB, len(payload), MiB):
            yield checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file="model.pt",
                                                                            data=payload[i:i + MiB]))
        yield checkpoint_pb2.SaveRequest(commit=checkpoint_pb2.Commit(files=[
            checkpoint_pb2.FileInfo(name="model.pt", sha256=hashlib.sha256(payload).hexdigest())]))

    channel = make_channel(ckpt_host.address, max_message_bytes=8 * MiB)
    deadline = 30.0
    start = time.monotonic()
    try:
        with pytest.raises(grpc.RpcError) as info:
            checkpoint_pb2_grpc.CheckpointServiceStub(channel).Save(requests(), timeout=deadline)
        elapsed = time.monotonic() - start
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"store {catalog.store.url}" in info.value.details()
        assert elapsed < deadline
        # Other calls fail the same way, promptly, while it is away.
        with pytest.raises(Unavailable, match=f"store {catalog.store.url}"):
            ckpt.lookup("agent", "run-1", "latest")
    finally:
        outage.end()
        channel.close()

    wait_for(lambda: not catalog.active_uploads, "the aborted upload to be released")
    # Nothing committed was lost or altered, and the failed save is invisible.
    assert [c.step for c in ckpt.list("agent", "run-1")] == [1]
    ckpt.download(committed.path, tmp_path / "out")
    assert (tmp_path / "out" / "model.pt").read_bytes() == b"m" * (6 * MiB)
    # The store is back: the next save succeeds, and so does the same step.
    assert ckpt.save("agent", "run-1", 2, {"model.pt": payload}).checkpoint.step == 2
    assert ckpt.read("agent/run-1/2", "model.pt") == payload
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 2
