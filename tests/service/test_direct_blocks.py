"""One trip for the blocks: on S3 a buffer service PUTs new blocks straight to the store (UploadBlocks).

The checkpoint service keeps the credentials: it grants one presigned PUT per
block (key, size and sha256 signed), never sees the bytes, and checks each
block in the store before it commits. The buffer service follows a grant only
to a host its store_endpoints setting allows. moto does not check the signed
checksum header (real S3 does), so these tests read every block back.
"""

from __future__ import annotations

import base64
import hashlib
import io
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from rewind import BufferClient, CheckpointClient, buffer_source
from rewind.buffer.v1 import buffer_pb2
from rewind.errors import DataLoss, FailedPrecondition, InvalidArgument, PermissionDenied, Unavailable
from rewind_buffer.server import serve
from rewind_checkpoint.layout import RunKey, is_digest
from rewind_checkpoint.server import serve as serve_checkpoints
from rewind_checkpoint.store import open_store
from tests.support.configs import SMALL, checkpoint_config
from tests.support.episodes import episode
from tests.support.processes import free_port

RUN = RunKey("agent", "run-1")
OBS_DIM = 1024  # ~4 KiB a row: 30 episodes of 50 steps make ~6 blocks of 1 MiB
STEPS = 50


@pytest.fixture
def s3_url(s3) -> str:
    return f"s3://{s3.create_bucket()}/rewind"


def serve_buffer(**overrides):
    # 1 MiB blocks (the smallest), so a few episodes make several.
    return serve(SMALL.replace(port=0, buffer_size=5_000, snapshot_block_mb=1, **overrides))


@pytest.fixture
def buffer_host():
    host = serve_buffer()
    yield host
    host.stop(grace_s=0.5)


@pytest.fixture
def ckpt_host(s3_url):
    host = serve_checkpoints(checkpoint_config(s3_url))
    yield host
    host.stop(grace_s=0.5)


def fill(address: str, first: int, count: int) -> None:
    with BufferClient(address, "buffer", timeout=30.0) as client:
        for eid in range(first, first + count):
            client.add(episode(eid, STEPS, obs_dim=OBS_DIM))


def save(ckpt_address: str, buffer_address: str, step: int):
    with CheckpointClient(ckpt_address, timeout=30.0) as ckpt:
        return ckpt.save("agent", "run-1", step, {"model.pt": b"weights"}, episode=step,
                         buffers=[buffer_source(buffer_address, "buffer", blocks=True)])


def stored_blocks(store) -> dict[str, bytes]:
    """Every stored block of the run, by name, with its bytes."""
    return {o.key.rsplit("/", 1)[1]: store.get(o.key) for o in store.list(RUN.blocks_prefix)
            if is_digest(o.key.rsplit("/", 1)[1])}


def writes_by_the_service(monkeypatch, ckpt_host) -> list[str]:
    """The keys the checkpoint service itself opens for writing, from now on."""
    store = ckpt_host.bindings[0].servicer.catalog.store
    opened: list[str] = []
    real = store.open_writer

    def spy(key):
        opened.append(key)
        return real(key)

    monkeypatch.setattr(store, "open_writer", spy)
    return opened


def test_blocks_go_straight_to_the_store_and_read_back_under_their_names(monkeypatch, ckpt_host, buffer_host,
                                                                          s3_url):
    opened = writes_by_the_service(monkeypatch, ckpt_host)
    fill(buffer_host.address, 0, 30)
    first = save(ckpt_host.address, buffer_host.address, 30)
    store = open_store(s3_url, create=False)
    blocks = stored_blocks(store)
    referenced = {b.sha256 for b in first.checkpoint.buffers[0].blocks}
    assert len(referenced) > 1 and set(blocks) == referenced
    assert all(hashlib.sha256(data).hexdigest() == name for name, data in blocks.items())
    assert not [k for k in opened if "/blocks/" in k]  # no block byte came through the service
    assert first.uploaded_bytes - first.checkpoint.total_bytes == sum(len(d) for d in blocks.values())

    fill(buffer_host.address, 30, 1)
    second = save(ckpt_host.address, buffer_host.address, 31)
    new = set(stored_blocks(store)) - set(blocks)
    assert len(new) == 1 and second.deduplicated_bytes > 0
    assert second.uploaded_bytes - second.checkpoint.total_bytes == len(store.get(RUN.block_key(new.pop())))


def test_a_restore_from_directly_uploaded_blocks_samples_exactly_as_before(ckpt_host, buffer_host):
    fill(buffer_host.address, 0, 20)
    with BufferClient(buffer_host.address, "buffer", timeout=30.0) as client:
        client.sample()  # the sampler's state moves, and must come back too
        saved = save(ckpt_host.address, buffer_host.address, 20)
        expected = [client.sample() for _ in range(3)]
        fill(buffer_host.address, 20, 5)
    target = serve_buffer()
    try:
        with CheckpointClient(ckpt_host.address, timeout=30.0) as ckpt:
            ckpt.restore_buffers(saved.checkpoint, [(target.address, "buffer")])
        with BufferClient(target.address, "buffer", timeout=30.0) as restored:
            for want in expected:
                for a, b in zip(restored.sample(), want, strict=True):
                    assert a.equal(b)
    finally:
        target.stop(grace_s=0.5)


def test_grants_sign_the_size_and_the_checksum(ckpt_host):
    store = ckpt_host.bindings[0].servicer.catalog.store
    data = b"block bytes"
    sha = hashlib.sha256(data).hexdigest()
    grant = store.presign_put(RUN.block_key(sha), len(data), sha, 60)
    signed = parse_qs(urlsplit(grant.url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-length", "x-amz-checksum-sha256"} <= set(signed)
    assert "X-Amz-Credential" in grant.url and store.client._request_signer._credentials.secret_key not in grant.url
    assert grant.headers == {"x-amz-checksum-sha256": base64.b64encode(bytes.fromhex(sha)).decode()}


def test_a_store_the_buffer_service_may_not_dial_fails_the_save_before_any_byte(s3_url, ckpt_host):
    host = serve_buffer(store_endpoints=("storage.example:9000",))
    try:
        fill(host.address, 0, 10)
        with pytest.raises(PermissionDenied, match=r"store_endpoints"):
            save(ckpt_host.address, host.address, 10)
        store = open_store(s3_url, create=False)
        assert stored_blocks(store) == {}
        assert not [o for o in store.list("") if o.key.endswith("manifest.json")]
        assert ckpt_host.bindings[0].servicer.catalog.pinned(RUN) == set()
        with BufferClient(host.address, "buffer", timeout=30.0) as client:
            assert client.stats().transitions == 10 * STEPS  # the buffer is as it was
    finally:
        host.stop(grace_s=0.5)


def test_switched_off_the_blocks_come_through_the_service(monkeypatch, s3_url, buffer_host):
    host = serve_checkpoints(checkpoint_config(s3_url, direct_uploads=False))
    try:
        opened = writes_by_the_service(monkeypatch, host)
        fill(buffer_host.address, 0, 10)
        saved = save(host.address, buffer_host.address, 10)
        referenced = {b.sha256 for b in saved.checkpoint.buffers[0].blocks}
        assert {k.rsplit("/", 1)[1] for k in opened if "/blocks/" in k} == referenced
    finally:
        host.stop(grace_s=0.5)


# -- the buffer service's side: grants it refuses, stores that refuse it ---------------------------------------


def grant_each(url_of, headers=None):
    """A grant callback: one BlockGrant per needed block, to url_of(sha256)."""
    return lambda needed: [buffer_pb2.BlockGrant(sha256=b.sha256, url=url_of(b.sha256), headers=headers or {})
                           for b in needed]


@pytest.mark.parametrize(("grant", "error", "message"), [
    (grant_each(lambda sha: f"http://storage.example:9000/bucket/{sha}"), PermissionDenied,
     r"grants\.grants\[0\]\.url: storage\.example:9000 is not an allowed store endpoint .*store_endpoints"),
    (grant_each(lambda sha: f"unix:///tmp/{sha}"), InvalidArgument, r"grants\.grants\[0\]\.url: .* not an http"),
    (grant_each(lambda sha: f"http://user:pw@127.0.0.1:1/{sha}"), InvalidArgument, r"no user name or password"),
    (grant_each(lambda sha: f"http://127.0.0.1:1/{sha}", {"Host": "elsewhere"}), InvalidArgument,
     r"grants\.grants\[0\]\.headers: 'Host' may not be set"),
    (lambda needed: [], InvalidArgument, r"grants: no grant for block [0-9a-f]{64} \(\d+ missing\)"),
    (lambda needed: [buffer_pb2.BlockGrant(sha256="0" * 64, url="http://127.0.0.1:1/x")], InvalidArgument,
     r"grants\.grants\[0\]\.sha256: '0{64}' is not a block BlocksNeeded named"),
    (grant_each(lambda sha: f"http://127.0.0.1:{free_port()}/bucket/{sha}"), Unavailable,
     r"grants\.grants\[\d+\]: the store at 127\.0\.0\.1:\d+ did not take the upload"),
])
def test_a_grant_the_buffer_service_refuses_fails_the_call_and_keeps_the_buffer(buffer_host, grant, error, message):
    fill(buffer_host.address, 0, 10)
    with BufferClient(buffer_host.address, "buffer", timeout=30.0) as client:
        with pytest.raises(error, match=message):
            list(client.upload_blocks([], grant))
        assert client.stats().transitions == 10 * STEPS
        # Nothing half-done is left: a whole snapshot and a block stream still work.
        assert client.snapshot(io.BytesIO()) > 0
        kinds = [r.WhichOneof("item") for r in client.snapshot_blocks([])]
        assert kinds[0] == "block" and "index" in kinds


def test_a_store_that_refuses_the_put_is_failed_precondition(s3, buffer_host):
    fill(buffer_host.address, 0, 5)
    missing_bucket = grant_each(lambda sha: f"{s3.endpoint}/no-such-bucket-here/{sha}")
    with BufferClient(buffer_host.address, "buffer", timeout=30.0) as client:
        with pytest.raises(FailedPrecondition,
                           match=r"refused the upload \(HTTP 404 NoSuchBucket\)"):
            list(client.upload_blocks([], missing_bucket))


def test_the_first_message_must_start_the_capture(buffer_host):
    from rewind.buffer.v1 import buffer_pb2_grpc

    with grpc.insecure_channel(buffer_host.address) as channel:
        stub = buffer_pb2_grpc.BufferServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.UploadBlocks(iter([buffer_pb2.UploadBlocksRequest(grants=buffer_pb2.BlockGrants())]),
                                   timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start: the first UploadBlocksRequest" in caught.value.details()


# -- the checkpoint service's side: a buffer service that breaks the contract ---------------------------------

GOOD = b"rows of a block"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


def fake_upload(put: bool = True, report: tuple[str, ...] = (GOOD_SHA,), data: bytes = GOOD,
                needed: tuple[str, ...] = (GOOD_SHA,)):
    """A fake BufferClient.upload_blocks: names `needed`, PUTs `data` to the grant (or not), reports `report`."""
    from rewind import presigned

    def upload_blocks(self, stored, grant, **kwargs):
        refs = [buffer_pb2.BlockRef(sha256=sha, size=len(GOOD)) for sha in needed]
        yield buffer_pb2.UploadBlocksResponse(needed=buffer_pb2.BlocksNeeded(blocks=refs))
        grants = {g.sha256: g for g in grant(refs)}
        if put:
            g = grants[GOOD_SHA]
            presigned.put(presigned.Grant(g.url, dict(g.headers)), len(data), [data], allowed=("127.0.0.1:*",),
                          field_name="test", setting="test", timeout_s=10)
        for sha in report:
            yield buffer_pb2.UploadBlocksResponse(uploaded=buffer_pb2.BlockRef(sha256=sha, size=len(GOOD)))
        yield buffer_pb2.UploadBlocksResponse(index=buffer_pb2.BlockIndexStart(
            size=5, blocks=[buffer_pb2.BlockRef(sha256=GOOD_SHA, size=len(GOOD))], episodes_added=1))
        yield buffer_pb2.UploadBlocksResponse(chunk=b"index")

    return upload_blocks


@pytest.mark.parametrize(("fake", "message"), [
    (fake_upload(put=False), r"uploaded: block [0-9a-f]{64} is not in the store"),
    (fake_upload(data=GOOD + b"!"), r"block [0-9a-f]{64} is in the store as 16 bytes .* not the 15 bytes it names"),
    (fake_upload(report=()), r"was granted but never reported uploaded"),
    (fake_upload(report=(GOOD_SHA, GOOD_SHA)), r"was not granted, or was reported twice"),
    (fake_upload(report=("1" * 64,)), r"block 1{64} was not granted"),
    (fake_upload(needed=(GOOD_SHA, GOOD_SHA)), r"is named twice"),
])
def test_a_buffer_service_that_breaks_the_upload_contract_fails_the_save(monkeypatch, ckpt_host, s3_url, fake,
                                                                         message):
    monkeypatch.setattr(BufferClient, "upload_blocks", fake)
    with pytest.raises(DataLoss, match=rf"buffers: 'buffer' at 127\.0\.0\.1:1: .*{message}"):
        save(ckpt_host.address, "127.0.0.1:1", 1)
    store = open_store(s3_url, create=False)
    assert not [o for o in store.list("") if o.key.endswith("manifest.json")]
    assert ckpt_host.bindings[0].servicer.catalog.pinned(RUN) == set()


def test_a_well_behaved_fake_commits_and_the_next_save_deduplicates(monkeypatch, ckpt_host, s3_url):
    monkeypatch.setattr(BufferClient, "upload_blocks", fake_upload())
    first = save(ckpt_host.address, "127.0.0.1:1", 1)
    assert first.uploaded_bytes - first.checkpoint.total_bytes == len(GOOD)
    monkeypatch.setattr(BufferClient, "upload_blocks", fake_upload(put=False, report=(), needed=()))
    second = save(ckpt_host.address, "127.0.0.1:1", 2)
    assert second.deduplicated_bytes == len(GOOD)
    assert stored_blocks(open_store(s3_url, create=False)) == {GOOD_SHA: GOOD}



# -- restores: the buffer service downloads its blocks itself --------------------------------------------------


def test_a_restore_fetches_the_blocks_from_the_store_not_through_the_service(monkeypatch, ckpt_host, buffer_host):
    fill(buffer_host.address, 0, 20)
    saved = save(ckpt_host.address, buffer_host.address, 20)
    catalog = ckpt_host.bindings[0].servicer.catalog
    read: list = []
    monkeypatch.setattr(catalog, "read_block", lambda *a, **k: read.append(a) or iter(()))
    fill(buffer_host.address, 20, 3)
    with CheckpointClient(ckpt_host.address, timeout=30.0) as ckpt:
        [restored] = ckpt.restore_buffers(saved.checkpoint)
    assert read == [] and restored.episodes_added == 20


def test_a_restore_from_a_store_the_buffer_service_may_not_dial_leaves_the_buffer_as_it_was(ckpt_host, buffer_host):
    fill(buffer_host.address, 0, 10)
    saved = save(ckpt_host.address, buffer_host.address, 10)
    target = serve_buffer(store_endpoints=("storage.example:9000",))
    try:
        fill(target.address, 0, 2)
        with CheckpointClient(ckpt_host.address, timeout=30.0) as ckpt:
            with pytest.raises(PermissionDenied, match=r"blocks\[0\]\.fetch\.url: 127\.0\.0\.1:\d+ is not an allowed "
                                                       r"store endpoint .*store_endpoints"):
                ckpt.restore_buffers(saved.checkpoint, [(target.address, "buffer")])
        with BufferClient(target.address, "buffer", timeout=30.0) as client:
            assert client.stats().episodes_added == 2
    finally:
        target.stop(grace_s=0.5)


@pytest.mark.parametrize(("after", "error", "message"), [
    (buffer_pb2.RestoreRequest(chunk=b"extra"), grpc.StatusCode.DATA_LOSS,
     "chunk: bytes arrived for a block that was fetched from the store"),
    (buffer_pb2.RestoreRequest(fetch=buffer_pb2.BlockGrant(url="http://127.0.0.1:1/x")),
     grpc.StatusCode.INVALID_ARGUMENT, "fetch: comes with the block it fetches"),
])
def test_a_fetch_must_come_with_its_block_and_no_bytes_may_follow_it(ckpt_host, buffer_host, after, error, message):
    from rewind.buffer.v1 import buffer_pb2_grpc
    from rewind_checkpoint.layout import CheckpointKey

    fill(buffer_host.address, 0, 10)
    saved = save(ckpt_host.address, buffer_host.address, 10)
    store = ckpt_host.bindings[0].servicer.catalog.store
    index = store.get(CheckpointKey(RUN, 10).file_key(saved.checkpoint.buffers[0].file))
    first = saved.checkpoint.buffers[0].blocks[0]
    fetch = buffer_pb2.BlockGrant(url=store.presign_get(RUN.block_key(first.sha256), 60).url)
    requests = [buffer_pb2.RestoreRequest(buffer="buffer", chunk=index),
                buffer_pb2.RestoreRequest(block=buffer_pb2.BlockRef(sha256=first.sha256, size=first.size),
                                          fetch=fetch), after]
    with grpc.insecure_channel(buffer_host.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            buffer_pb2_grpc.BufferServiceStub(channel).Restore(iter(requests), timeout=30)
    assert (caught.value.code(), message in caught.value.details()) == (error, True), caught.value.details()
    with BufferClient(buffer_host.address, "buffer", timeout=30.0) as client:
        assert client.stats().episodes_added == 10
