"""The checkpoint service and its clients as processes: health and a graceful stop,
a killed uploader, a killed service.

The kills run on file:// and on a real S3 server. Waits poll for a condition with
a deadline; none sleeps a fixed time.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import grpc
import pytest

from rewind import CheckpointClient
from rewind.channel import make_channel
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.errors import NotFound
from rewind_checkpoint.layout import CheckpointKey
from rewind_checkpoint.store import S3Store, open_store
from tests.support.processes import ServiceProcess, rewind, wait_for

MiB = 2**20


def test_health_and_graceful_stop(tmp_path):
    proc = ServiceProcess(tmp_path, "--store", f"file://{tmp_path}/store", group="ckpt")
    try:
        result = rewind("health", "--address", proc.address, "--service", "rewind.checkpoint.v1.CheckpointService")
        assert (result.returncode, result.stdout.strip()) == (0, "SERVING")
        assert proc.terminate() == 0
    finally:
        proc.stop()


def pending_multipart(store) -> list:
    if not isinstance(store, S3Store):
        return []
    return store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])


def server_has_bytes(store, prefix: str, at_least: int) -> bool:
    """The service has started writing an object under prefix (S3: a multipart upload is open)."""
    if isinstance(store, S3Store):
        return bool(pending_multipart(store))
    return any(o.size >= at_least for o in store.list(prefix))


UPLOADER = r"""
import sys, time
from rewind.channel import make_channel
from rewind.checkpoint.v1 import checkpoint_pb2 as pb, checkpoint_pb2_grpc
stub = checkpoint_pb2_grpc.CheckpointServiceStub(make_channel(sys.argv[1]))
def requests():
    yield pb.SaveRequest(header=pb.SaveHeader(agent_id="agent", run_id="run-1", step=99,
                         files=[pb.FileAnnouncement(name="model.pt", size=20 * 2**20)]))
    for _ in range(7):
        yield pb.SaveRequest(chunk=pb.FileChunk(file="model.pt", data=b"\x01" * 2**20))
    print("sent", flush=True)
    time.sleep(3600)  # killed here, mid-stream
stub.Save(requests(), timeout=3600)
"""


def test_uploader_killed_mid_stream_leaves_nothing(ckpt, ckpt_host, tmp_path):
    catalog = ckpt_host.bindings[0].servicer.catalog
    store = open_store(catalog.store.url, create=False)
    ckpt.save("agent", "run-1", 1, {"model.pt": b"committed"})
    before = [(o.key, o.size) for o in store.list("")]

    child = subprocess.Popen([sys.executable, "-c", UPLOADER, ckpt_host.address], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"sent\n"
        key = CheckpointKey.checked("agent", "run-1", 99)
        wait_for(lambda: key in catalog.active_uploads, "the upload to start")
        wait_for(lambda: server_has_bytes(store, key.prefix, 5 * MiB), "the service to write bytes")
    finally:
        child.kill()
        child.wait()
    wait_for(lambda: not catalog.active_uploads, "the service to abort the upload")

    assert [(o.key, o.size) for o in store.list("")] == before
    assert pending_multipart(store) == []
    assert [c.step for c in ckpt.list("agent", "run-1")] == [1]
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 1


def _hanging_save(address: str, release: threading.Event, errors: list) -> threading.Thread:
    """A save that sends a whole first file and half a second one, then waits for `release`."""

    def requests():
        yield checkpoint_pb2.SaveRequest(header=checkpoint_pb2.SaveHeader(
            agent_id="agent", run_id="run-1", step=50,
            files=[checkpoint_pb2.FileAnnouncement(name="a.bin", size=MiB),
                   checkpoint_pb2.FileAnnouncement(name="b.bin", size=2 * MiB)]))
        yield checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file="a.bin", data=b"a" * MiB))
        yield checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file="b.bin", data=b"b" * MiB))
        release.wait(60)

    def run():
        channel = make_channel(address)
        try:
            checkpoint_pb2_grpc.CheckpointServiceStub(channel).Save(requests(), timeout=60)
        except grpc.RpcError as exc:
            errors.append(exc.code())
        finally:
            channel.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_service_killed_mid_upload_leaves_invisible_staging_that_a_restart_cleans(store_url, tmp_path):
    store = open_store(store_url)
    args = ("--store", store_url, "--store-timeout-s", "2", "--part-mb", "5")
    service = ServiceProcess(tmp_path, *args, "--staging-max-age-s", "3600", group="ckpt")
    release, errors = threading.Event(), []
    try:
        with CheckpointClient(service.address) as ckpt:
            ckpt.save("agent", "run-1", 10, {"model.pt": b"committed"})
        thread = _hanging_save(service.address, release, errors)
        prefix = "agent/run-1/step-0000000050/"
        wait_for(lambda: any(o.key == prefix + "a.bin" for o in store.list(prefix)), "a.bin to be stored")
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait()
    finally:
        release.set()
        service.stop()
    thread.join(30)
    assert errors == [grpc.StatusCode.UNAVAILABLE]
    leftovers = store.list(prefix)
    assert leftovers and all(not o.key.endswith("manifest.json") for o in leftovers)

    # Restarted with a long staging age: the leftovers stay, but are invisible.
    service = ServiceProcess(tmp_path, *args, "--staging-max-age-s", "3600", group="ckpt")
    try:
        with CheckpointClient(service.address) as ckpt:
            assert [c.step for c in ckpt.list("agent", "run-1")] == [10]
            assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 10
            with pytest.raises(NotFound):
                ckpt.lookup("agent", "run-1", 50)
    finally:
        service.stop()
    assert store.list(prefix)

    # Restarted with staging age 0: the start-up sweep removes them before serving.
    service = ServiceProcess(tmp_path, *args, "--staging-max-age-s", "0", group="ckpt")
    try:
        assert store.list(prefix) == []
        with CheckpointClient(service.address) as ckpt:
            assert [c.step for c in ckpt.list("agent", "run-1")] == [10]
            saved = ckpt.save("agent", "run-1", 50, {"a.bin": b"again"})  # the step is free again
            assert saved.checkpoint.step == 50
    finally:
        service.stop()
