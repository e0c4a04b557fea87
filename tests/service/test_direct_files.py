"""Large checkpoint files skip the checkpoint service on S3 (SaveDirect): the client PUTs them to presigned
URLs, the service checks them at the commit; on file:// the same call streams them as Save does.

What went through the service is read from the stream it consumed (Upload._consume, tapped), not from any
flag. moto keeps no checksum and does not check the signed x-amz-checksum-sha256 header, so the DATA_LOSS test
stands in a store that reports the stored bytes' sha256. Waits poll with a deadline; none sleeps a fixed time.
"""

from __future__ import annotations

import hashlib
import queue
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch

from rewind import BufferClient, CheckpointClient, presigned
from rewind.channel import make_channel
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.checkpoint_client import DIRECT_MIN_BYTES
from rewind.endpoints import LOOPBACK
from rewind.errors import DataLoss, InvalidArgument, NotFound, PermissionDenied
from rewind_checkpoint.layout import CheckpointKey, RunKey
from rewind_checkpoint.upload import Upload
from rewind_cli.main import main as cli_main
from rewind_trainer.checkpointer import TRAINER_FILE, Checkpointer, Cut
from rewind_trainer.connections import connect, parts_of
from rewind_trainer.settings import TrainSettings
from tests.support.processes import wait_for

MiB = 2**20
BIG = random.Random(14).randbytes(3 * MiB + 17)
SMALL_FILE = b'{"small": true}'
KEY = CheckpointKey(RunKey("agent", "run-1"), 1)
ON_S3 = pytest.mark.parametrize("store_url", ["s3"], indirect=True)  # tests of grants: only S3 presigns


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def streamed(monkeypatch) -> Counter:
    """Bytes of each file that reached the service in the Save/SaveDirect stream, by file name."""
    seen: Counter = Counter()
    consume = Upload._consume

    def tapped(self, requests):
        def tap():
            for request in requests:
                if request.HasField("chunk"):
                    seen[request.chunk.file] += len(request.chunk.data)
                yield request

        return consume(self, tap())

    monkeypatch.setattr(Upload, "_consume", tapped)
    return seen


def store_of(ckpt_host):
    return ckpt_host.bindings[0].servicer.catalog.store


def committed(client: CheckpointClient) -> list[int]:
    """The steps of agent/run-1's committed checkpoints (none when the store holds nothing of the run)."""
    try:
        return [c.step for c in client.list("agent", "run-1")]
    except NotFound:
        return []


def stored_keys(store, prefix: str = "agent/") -> list[str]:
    return sorted(o.key for o in store.list(prefix))


class Stream:
    """A SaveDirect call driven by hand: send() requests, end() the stream, next() event."""

    def __init__(self, address: str) -> None:
        self.channel = make_channel(address, max_message_bytes=8 * MiB)
        self.requests: queue.Queue = queue.Queue()
        stub = checkpoint_pb2_grpc.CheckpointServiceStub(self.channel)
        self.call = stub.SaveDirect(iter(self.requests.get, None), timeout=30)

    def send(self, **item) -> None:
        self.requests.put(checkpoint_pb2.SaveDirectRequest(**item))

    def end(self) -> None:
        self.requests.put(None)

    def next(self):
        return next(self.call)

    def close(self) -> None:
        self.end()
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def stream(ckpt_host):
    streams = []

    def start(files: dict[str, bytes], announce_sha: bool = True) -> Stream:
        s = Stream(ckpt_host.address)
        streams.append(s)
        header = checkpoint_pb2.SaveHeader(agent_id="agent", run_id="run-1", step=1, files=[
            checkpoint_pb2.FileAnnouncement(name=n, size=len(d), sha256=sha(d) if announce_sha else "")
            for n, d in files.items()], store_endpoints=["127.0.0.1:*"])
        s.send(header=header)
        return s

    yield start
    for s in streams:
        s.close()


def grant_of(event: checkpoint_pb2.SaveDirectResponse) -> presigned.Grant:
    [g] = event.grants.grants
    return presigned.Grant(g.url, dict(g.headers))


def put(grant: presigned.Grant, data: bytes) -> None:
    presigned.put(grant, len(data), [data], allowed=("127.0.0.1:*",), field_name="test", setting="test",
                  timeout_s=10)


def commit(s: Stream, files: dict[str, bytes]):
    s.send(commit=checkpoint_pb2.Commit(files=[checkpoint_pb2.FileInfo(name=n, sha256=sha(d))
                                               for n, d in files.items()]))
    s.end()
    return s.next()


# -- the SDK, on both stores ---------------------------------------------------------------------------------


def test_a_big_file_goes_straight_to_s3_and_streams_on_file(ckpt, ckpt_host, store_url, streamed, tmp_path):
    path = tmp_path / "trainer.pt"
    path.write_bytes(BIG)
    sent = []
    saved = ckpt.save("agent", "run-1", 1, {"trainer.pt": path, "small.json": SMALL_FILE}, progress=sent.append)
    c = saved.checkpoint
    assert {f.name: (f.size, f.sha256) for f in c.files} == {
        "trainer.pt": (len(BIG), sha(BIG)), "small.json": (len(SMALL_FILE), sha(SMALL_FILE))}
    assert saved.uploaded_bytes == c.total_bytes == len(BIG) + len(SMALL_FILE)
    assert sum(sent) == len(BIG) + len(SMALL_FILE)
    if store_url.startswith("s3://"):
        assert streamed == {"small.json": len(SMALL_FILE)}  # trainer.pt's bytes never reached the service
        assert saved.direct_bytes == len(BIG)
    else:
        assert streamed == {"trainer.pt": len(BIG), "small.json": len(SMALL_FILE)}
        assert saved.direct_bytes == 0
    assert store_of(ckpt_host).get(KEY.file_key("trainer.pt")) == BIG
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint == c  # verified: every sha256 read back
    assert ckpt.read(c, "trainer.pt") == BIG


def test_small_files_take_plain_save(ckpt, streamed):
    data = b"x" * (DIRECT_MIN_BYTES - 1)
    saved = ckpt.save("agent", "run-1", 1, {"model.pt": data})
    assert streamed == {"model.pt": len(data)}
    assert (saved.direct_bytes, saved.uploaded_bytes) == (0, len(data))


@ON_S3
def test_a_service_without_save_direct_gets_a_plain_save(ckpt_host, store_url, streamed):
    servicer = ckpt_host.bindings[0].servicer
    old = grpc.server(ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 8 * MiB)])
    old.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rewind.checkpoint.v1.CheckpointService", {
        "Save": grpc.stream_unary_rpc_method_handler(
            servicer.Save, request_deserializer=checkpoint_pb2.SaveRequest.FromString,
            response_serializer=checkpoint_pb2.SaveResponse.SerializeToString)}),))  # a release before SaveDirect
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    try:
        with CheckpointClient(f"127.0.0.1:{port}", timeout=20) as client:
            saved = client.save("agent", "run-1", 1, {"trainer.pt": BIG})
    finally:
        old.stop(0)
    assert streamed == {"trainer.pt": len(BIG)}
    assert saved.direct_bytes == 0
    assert [(f.name, f.sha256) for f in saved.checkpoint.files] == [("trainer.pt", sha(BIG))]


@ON_S3
def test_a_client_that_may_not_dial_the_store_sends_its_big_files_through_the_service(ckpt_host, store_url,
                                                                                       streamed):
    with CheckpointClient(ckpt_host.address, timeout=20, store_endpoints=("minio:9000",)) as client:
        saved = client.save("agent", "run-1", 1, {"trainer.pt": BIG})
        assert (saved.direct_bytes, saved.uploaded_bytes) == (0, len(BIG))
        assert client.read(saved.checkpoint, "trainer.pt") == BIG  # and reads them back through it too
    assert streamed == {"trainer.pt": len(BIG)}
    assert store_of(ckpt_host).get(KEY.file_key("trainer.pt")) == BIG


@ON_S3
def test_a_grant_to_a_store_the_client_did_not_allow_is_refused_and_nothing_saved(ckpt_host, store_url, streamed,
                                                                                  monkeypatch):
    from rewind_checkpoint import upload

    monkeypatch.setattr(upload.presigned, "reachable", lambda grant, allowed: True)  # a service that ignores them
    with CheckpointClient(ckpt_host.address, timeout=20, store_endpoints=("minio:9000",)) as client:
        with pytest.raises(PermissionDenied, match=r"store_endpoints.*127\.0\.0\.1:\d+.*minio:9000") as err:
            client.save("agent", "run-1", 1, {"trainer.pt": BIG})
        assert "\n" not in err.value.message
        assert committed(client) == []
    assert streamed == {}
    # The cancelled call aborts the upload: the step is free again, and the store holds nothing of it.
    wait_for(lambda: KEY not in ckpt_host.bindings[0].servicer.catalog.active_uploads, "the aborted upload's end")
    assert stored_keys(store_of(ckpt_host)) == []


# -- SaveDirect by hand, on S3 ---------------------------------------------------------------------------------


@ON_S3
def test_an_upload_that_ends_without_a_commit_removes_the_put_object(ckpt, ckpt_host, store_url, stream):
    s = stream({"trainer.pt": BIG})
    put(grant_of(s.next()), BIG)
    assert stored_keys(store_of(ckpt_host)) == [KEY.file_key("trainer.pt")]
    s.end()
    with pytest.raises(grpc.RpcError) as err:
        s.next()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "without a Commit" in err.value.details()
    assert stored_keys(store_of(ckpt_host)) == []  # removed before the answer
    assert committed(ckpt) == []


@ON_S3
def test_a_call_that_ends_right_after_its_grants_ends_the_upload(ckpt_host, store_url, monkeypatch):
    servicer = ckpt_host.bindings[0].servicer
    header = checkpoint_pb2.SaveHeader(agent_id="agent", run_id="run-1", step=1, files=[
        checkpoint_pb2.FileAnnouncement(name="trainer.pt", size=len(BIG), sha256=sha(BIG))],
        store_endpoints=["127.0.0.1:*"])
    events = servicer.SaveDirect(iter([checkpoint_pb2.SaveDirectRequest(header=header)]), None)
    [granted] = next(events).grants.grants
    assert granted.name == "trainer.pt" and KEY in servicer.catalog.active_uploads
    events.close()  # what gRPC's thread does when the client goes away while the service waits at the yield
    assert KEY not in servicer.catalog.active_uploads
    late = checkpoint_pb2.SaveDirectResponse(grants=checkpoint_pb2.FileGrants(grants=[granted]))
    put(grant_of(late), BIG)  # a late PUT
    assert stored_keys(servicer.catalog.store) == [KEY.file_key("trainer.pt")]
    later = time.time() + servicer.catalog.staging_max_age_s + 60
    monkeypatch.setattr(servicer.catalog, "clock", lambda: later)  # ... is staging, which the sweep removes when old
    assert servicer.catalog.clean_staging() == 1
    assert stored_keys(servicer.catalog.store) == []


@ON_S3
def test_a_cancelled_upload_removes_the_put_object(ckpt, ckpt_host, store_url, stream):
    s = stream({"trainer.pt": BIG})
    put(grant_of(s.next()), BIG)
    s.call.cancel()
    wait_for(lambda: stored_keys(store_of(ckpt_host)) == [], "the granted object's removal")
    assert committed(ckpt) == []


@ON_S3
def test_a_granted_file_never_put_fails_the_commit(ckpt, ckpt_host, store_url, stream):
    s = stream({"trainer.pt": BIG})
    grant_of(s.next())
    with pytest.raises(grpc.RpcError) as err:
        commit(s, {"trainer.pt": BIG})
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'trainer.pt'" in err.value.details() and "granted but not uploaded" in err.value.details()
    assert committed(ckpt) == []


@ON_S3
def test_a_put_of_another_size_fails_the_commit(ckpt, ckpt_host, store_url, stream):
    s = stream({"trainer.pt": BIG})
    put(grant_of(s.next()), BIG[:-1])  # moto checks neither the signed length nor the checksum
    with pytest.raises(grpc.RpcError) as err:
        commit(s, {"trainer.pt": BIG})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"'trainer.pt' is {len(BIG) - 1} bytes in the store, not the {len(BIG)}" in err.value.details()
    assert committed(ckpt) == []
    assert stored_keys(store_of(ckpt_host)) == []


@ON_S3
def test_other_bytes_fail_the_commit_where_the_store_reports_checksums(ckpt, ckpt_host, store_url, stream,
                                                                      monkeypatch):
    store = store_of(ckpt_host)
    # Real S3 and MinIO report the sha256 they checked the body against; moto reports none, so stand one in.
    monkeypatch.setattr(store, "checksum_of", lambda key: (len(store.get(key)), sha(store.get(key))))
    s = stream({"trainer.pt": BIG})
    put(grant_of(s.next()), bytes(reversed(BIG)))
    with pytest.raises(grpc.RpcError) as err:
        commit(s, {"trainer.pt": BIG})
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "'trainer.pt'" in err.value.details()
    assert committed(ckpt) == []


@ON_S3
def test_a_chunk_of_a_granted_file_is_refused(ckpt, ckpt_host, store_url, stream):
    s = stream({"trainer.pt": BIG})
    grant_of(s.next())
    s.send(chunk=checkpoint_pb2.FileChunk(file="trainer.pt", data=BIG[:1000]))
    with pytest.raises(grpc.RpcError) as err:
        s.next()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'trainer.pt' was granted a direct upload" in err.value.details()
    assert committed(ckpt) == []


@ON_S3
def test_a_commit_naming_another_sha256_for_a_granted_file_is_refused(ckpt, store_url, stream):
    s = stream({"trainer.pt": BIG})
    put(grant_of(s.next()), BIG)
    with pytest.raises(grpc.RpcError) as err:
        commit(s, {"trainer.pt": BIG[:-1]})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'trainer.pt' has sha256" in err.value.details()
    assert committed(ckpt) == []


# -- on both stores ----------------------------------------------------------------------------------------------


def test_without_a_sha256_nothing_is_granted_and_chunks_commit(ckpt, store_url, stream):
    s = stream({"trainer.pt": BIG}, announce_sha=False)
    assert list(s.next().grants.grants) == []
    s.send(chunk=checkpoint_pb2.FileChunk(file="trainer.pt", data=BIG))
    done = commit(s, {"trainer.pt": BIG}).done
    assert [(f.name, f.size, f.sha256) for f in done.checkpoint.files] == [("trainer.pt", len(BIG), sha(BIG))]
    assert done.uploaded_bytes == len(BIG)


def test_a_save_whose_bytes_differ_from_their_announced_sha256_is_refused(ckpt, ckpt_host):
    channel = make_channel(ckpt_host.address)
    stub = checkpoint_pb2_grpc.CheckpointServiceStub(channel)
    data = b"weights"
    header = checkpoint_pb2.SaveHeader(agent_id="agent", run_id="run-1", step=1, files=[
        checkpoint_pb2.FileAnnouncement(name="model.pt", size=len(data), sha256=sha(b"other"))])
    requests = [checkpoint_pb2.SaveRequest(header=header),
                checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file="model.pt", data=data)),
                checkpoint_pb2.SaveRequest(commit=checkpoint_pb2.Commit(files=[
                    checkpoint_pb2.FileInfo(name="model.pt", sha256=sha(data))]))]
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.Save(iter(requests), timeout=20)
    finally:
        channel.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'model.pt' arrived with sha256" in err.value.details() and "its announcement gave" in err.value.details()
    assert committed(ckpt) == []


def test_a_malformed_announced_sha256_is_refused(ckpt, ckpt_host):
    s = Stream(ckpt_host.address)
    try:
        s.send(header=checkpoint_pb2.SaveHeader(agent_id="agent", run_id="run-1", step=1, files=[
            checkpoint_pb2.FileAnnouncement(name="trainer.pt", size=3, sha256=sha(b"abc").upper())]))
        with pytest.raises(grpc.RpcError) as err:
            s.next()
    finally:
        s.close()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "files[0].sha256" in err.value.details() and "64 lower-case hex" in err.value.details()
    assert committed(ckpt) == []


# -- the trainer -----------------------------------------------------------------------------------------------------


@ON_S3
def test_the_trainers_checkpoint_puts_trainer_pt_straight_to_s3(ckpt, ckpt_host, service, streamed):
    with BufferClient(service.address, "buffer", timeout=20) as buffer:
        test_buffer = buffer.using("test_buffer")
        for client in (buffer, test_buffer):
            client.reset(buffer_size=1000, batch_size=8, horizon=3, min_history=0)
        checkpointer = Checkpointer(ckpt, "agent", "run-1", parts_of([buffer], test_buffer, 1000),
                                    retention={"keep_last": 0}, cut=Cut(routing_seed=1, generation=1))
        weights = {"encoder.weight": torch.arange(2 * MiB // 4, dtype=torch.float32)}  # ~2 MiB of model
        job = checkpointer.start(1, 0, lambda: {"agent": {"model": weights}, "loop": {"step": 1}}, {}, {}, {}, {})
        path = job.done.result(timeout=60)
    trainer_pt = next(f for f in ckpt.lookup("agent", "run-1", "latest").checkpoint.files if f.name == TRAINER_FILE)
    assert path.endswith("agent/run-1/step-0000000001") and checkpointer.status.saves == 1
    assert trainer_pt.size > DIRECT_MIN_BYTES
    assert TRAINER_FILE not in streamed  # it went straight to the store
    assert sha(store_of(ckpt_host).get(KEY.file_key(TRAINER_FILE))) == trainer_pt.sha256


@pytest.mark.parametrize("store_url", ["file"], indirect=True)
def test_the_trainer_hands_its_store_endpoints_to_its_checkpoint_client(ckpt_host, service):
    assert TrainSettings().store_endpoints == LOOPBACK
    settings = TrainSettings(buffer_address=service.address, checkpoint_address=ckpt_host.address,
                             store_endpoints=("minio:9000", "*.amazonaws.com:443"))
    with connect(settings) as services:
        assert services.ckpt.store_endpoints == ("minio:9000", "*.amazonaws.com:443")


# -- the CLI -------------------------------------------------------------------------------------------------------


@ON_S3
def test_rewind_ckpt_save_puts_big_files_where_store_endpoints_allow(ckpt_host, store_url, tmp_path, capsys,
                                                                   streamed):
    path = tmp_path / "trainer.pt"
    path.write_bytes(BIG)
    args = ["ckpt", "save", "agent/run-1", str(path), "--step", "1", "--address", ckpt_host.address]
    # A store the client may not dial: the file goes through the service.
    assert cli_main([*args, "--store-endpoints", "minio:9000, *.amazonaws.com:443"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("committed ") and "straight to the store" not in out
    assert streamed == {"trainer.pt": len(BIG)}
    streamed.clear()

    assert cli_main([*args, "--step", "2"]) == 0  # the default allows loopback, where moto listens
    out = capsys.readouterr().out
    assert out.startswith("committed ") and "3.0 MiB straight to the store" in out
    assert streamed == {}
    assert store_of(ckpt_host).get(KEY.file_key("trainer.pt")) == BIG


# -- downloads ------------------------------------------------------------------------------------------------


def test_a_big_file_comes_straight_from_s3_where_the_client_may_dial_it(ckpt, ckpt_host, store_url, monkeypatch,
                                                                        tmp_path):
    saved = ckpt.save("agent", "run-1", 1, {"trainer.pt": BIG, "small.json": SMALL_FILE})
    catalog = ckpt_host.bindings[0].servicer.catalog
    real, served = catalog.read_file, []
    monkeypatch.setattr(catalog, "read_file", lambda manifest, name, *a: served.append(name) or real(manifest, name,
                                                                                                     *a))
    assert ckpt.read(saved.checkpoint, "trainer.pt") == BIG
    ckpt.download(saved.checkpoint, tmp_path / "out")
    assert (tmp_path / "out" / "trainer.pt").read_bytes() == BIG
    assert (tmp_path / "out" / "small.json").read_bytes() == SMALL_FILE
    if store_url.startswith("s3://"):
        assert served == ["small.json"]  # trainer.pt's bytes never passed through the service
    else:
        assert served == ["trainer.pt", "trainer.pt", "small.json"]


@ON_S3
def test_a_corrupt_file_fetched_from_the_store_is_data_loss_and_nothing_is_kept(ckpt, ckpt_host, store_url,
                                                                                tmp_path):
    saved = ckpt.save("agent", "run-1", 1, {"trainer.pt": BIG})
    store = store_of(ckpt_host)
    store.put(KEY.file_key("trainer.pt"), BIG[:-1] + b"?")
    with pytest.raises(DataLoss, match="trainer.pt: the downloaded bytes fail their sha256 check"):
        ckpt.read(saved.checkpoint, "trainer.pt")
    with pytest.raises(DataLoss, match="trainer.pt"):
        ckpt.download(saved.checkpoint, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_download_with_too_many_store_endpoints_is_refused(ckpt_host):
    request = checkpoint_pb2.DownloadRequest(ref=checkpoint_pb2.CheckpointRef(path="agent/run-1/latest"),
                                             store_endpoints=["127.0.0.1:*"] * 65)
    with grpc.insecure_channel(ckpt_host.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            list(checkpoint_pb2_grpc.CheckpointServiceStub(channel).Download(request, timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "store_endpoints: 65 entries; the limit is 64" in err.value.details()


def test_a_save_with_too_many_store_endpoints_is_refused_before_anything_is_written(ckpt, ckpt_host):
    with pytest.raises(InvalidArgument, match=r"header\.store_endpoints: 65 entries; the limit is 64"):
        ckpt.save("agent", "run-1", 1, {"trainer.pt": BIG}, store_endpoints=["127.0.0.1:*"] * 65)
    assert stored_keys(store_of(ckpt_host)) == []


@ON_S3
def test_rewind_ckpt_download_fetches_big_files_from_the_store_where_store_endpoints_allow(
        ckpt, ckpt_host, store_url, tmp_path, capsys, monkeypatch):
    saved = ckpt.save("agent", "run-1", 1, {"trainer.pt": BIG})
    catalog = ckpt_host.bindings[0].servicer.catalog
    real, served = catalog.read_file, []
    monkeypatch.setattr(catalog, "read_file", lambda manifest, name, *a: served.append(name) or real(manifest, name,
                                                                                                     *a))
    args = ["ckpt", "download", saved.checkpoint.path, "--address", ckpt_host.address]
    assert cli_main([*args, "--out", str(tmp_path / "a"), "--store-endpoints", "minio:9000"]) == 0
    assert served == ["trainer.pt"]  # a store this command may not dial: through the service
    assert cli_main([*args, "--out", str(tmp_path / "b")]) == 0  # the default allows loopback, where moto listens
    assert served == ["trainer.pt"]
    assert (tmp_path / "a" / "trainer.pt").read_bytes() == (tmp_path / "b" / "trainer.pt").read_bytes() == BIG
    assert "(sha256 verified)" in capsys.readouterr().out
