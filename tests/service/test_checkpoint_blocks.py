"""Buffers saved as content-addressed blocks, end to end with a real buffer service, on file:// and on a
real S3 server: exact restores, saves that cost what changed, dedup across restarts, a killed
uploader, and a save racing a delete.

Waits poll for a condition with a deadline (or wait on an event); none sleeps a fixed time.
"""

from __future__ import annotations

import hashlib
import signal
import threading

import grpc
import pytest
import torch

from rewind import BufferClient, CheckpointClient, buffer_source
from rewind.errors import DataLoss, RewindError
from rewind_buffer import block_stream
from rewind_buffer.server import serve
from rewind_checkpoint.layout import CheckpointKey, RunKey, is_digest
from rewind_checkpoint.store import S3Store, open_store
from tests.support.configs import SMALL, checkpoint_config
from tests.support.episodes import episode
from tests.support.processes import ServiceProcess, wait_for

MiB = 2**20
RUN = RunKey("agent", "run-1")
OBS_DIM = 256   # ~1 KiB a row, so 100 episodes of 100 steps make a ~10 MiB buffer
EPISODES = 100
STEPS = 100


@pytest.fixture
def big():
    """A buffer service with room for ~20,000 transitions of 1 KiB, and a client of its `buffer`."""
    host = serve(SMALL.replace(port=0, buffer_size=20_000, max_message_mb=4))
    with BufferClient(host.address, "buffer", timeout=30.0, max_message_bytes=4 * MiB) as client:
        yield host, client
    host.stop(grace_s=0.5)


def fill(client: BufferClient, first: int, count: int) -> None:
    for eid in range(first, first + count):
        client.add(episode(eid, STEPS, obs_dim=OBS_DIM))


def save_blocks(ckpt: CheckpointClient, address: str, step: int, form: str = "buffer_source", **kwargs):
    """Save `buffer` as blocks, the default of both the SDK's forms: buffer_source(...) and the plain pair."""
    source = buffer_source(address, "buffer") if form == "buffer_source" else (address, "buffer")
    return ckpt.save("agent", "run-1", step, {"model.pt": f"weights {step}".encode()}, episode=step,
                     buffers=[source], **kwargs)


def block_names(store) -> set[str]:
    """The names of the run's stored blocks (well-formed digests only)."""
    return {o.key.rsplit("/", 1)[1] for o in store.list(RUN.blocks_prefix) if is_digest(o.key.rsplit("/", 1)[1])}


def store_of(ckpt_host):
    catalog = ckpt_host.bindings[0].servicer.catalog
    return catalog, open_store(catalog.store.url, create=False)


def assert_same_batches(client: BufferClient, expected: list) -> None:
    for want in expected:
        for a, b in zip(client.sample(), want, strict=True):
            assert torch.equal(a, b)


class Gate:
    """Holds the buffer service's block streams once `after_bytes` bytes of blocks have gone out (in the
    stream, or on S3 in a PUT straight to the store), until released: a save caught mid-block (or, with 0,
    before its first block)."""

    def __init__(self, monkeypatch, after_bytes: int) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        self.after_bytes, self.sent = after_bytes, 0
        self.die = False  # on release, the process holding the bytes dies: its connection closes mid-block
        real = block_stream.stream_blocks

        def gated(state, stored, chunk_bytes, sink=None):
            for event in real(state, stored, chunk_bytes, None if sink is None else _GatedSink(sink, self)):
                if isinstance(event, (bytes, memoryview)):
                    self.hold(len(event))
                yield event

        monkeypatch.setattr(block_stream, "stream_blocks", gated)

    def hold(self, nbytes: int) -> None:
        self.sent += nbytes
        if self.sent >= self.after_bytes and not self.reached.is_set():
            self.reached.set()
            self.release.wait(60)
            if self.die:
                raise ConnectionAbortedError("the uploader died mid-block")


class _GatedSink:
    """A BlockSink whose PUTs stop at the gate, with the connection to the store open."""

    def __init__(self, sink, gate: Gate) -> None:
        self.sink, self.gate = sink, gate

    def expect(self, needed) -> None:
        self.sink.expect(needed)

    def put(self, block, pieces) -> None:
        def held():
            for piece in pieces:
                self.gate.hold(len(piece))
                yield piece

        self.sink.put(block, held())


def test_block_checkpoint_restores_and_samples_exactly(ckpt, ckpt_host, big):
    host, buffer = big
    _, store = store_of(ckpt_host)
    fill(buffer, 0, 10)
    saved = save_blocks(ckpt, host.address, 10)
    c = saved.checkpoint
    [entry] = c.buffers
    assert (entry.buffer, entry.file, entry.format, entry.episodes_added) == ("buffer", "buffer.snapshot", "blocks", 10)
    assert block_names(store) == {b.sha256 for b in entry.blocks} and entry.blocks
    assert saved.deduplicated_bytes == 0
    assert saved.uploaded_bytes == c.total_bytes + sum(b.size for b in entry.blocks)
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint == c  # verified: files and blocks
    expected = [buffer.sample() for _ in range(3)]
    fill(buffer, 10, 2)  # the run moves on ...

    [restored] = ckpt.restore_buffers(c)  # ... and is rewound to the checkpoint
    assert (restored.episodes, restored.transitions, restored.episodes_added) == (10, 10 * STEPS, 10)
    assert_same_batches(buffer, expected)

    fresh = serve(SMALL.replace(port=0, buffer_size=20_000, max_message_mb=4))
    try:
        [into] = ckpt.restore_buffers(c, [(fresh.address, "buffer")])
        assert into.episodes_added == 10
        with BufferClient(fresh.address, "buffer", timeout=30.0, max_message_bytes=4 * MiB) as other:
            assert_same_batches(other, expected)
    finally:
        fresh.stop(grace_s=0.5)


@pytest.mark.parametrize("form", ["buffer_source", "pair"])
def test_a_second_save_uploads_only_the_new_episode(ckpt, ckpt_host, big, form):
    host, buffer = big
    _, store = store_of(ckpt_host)
    fill(buffer, 0, EPISODES)
    first = save_blocks(ckpt, host.address, 1, form)
    before = block_names(store)
    assert first.uploaded_bytes > 10 * MiB
    assert first.checkpoint.buffers[0].format == "blocks"

    fill(buffer, EPISODES, 1)
    second = save_blocks(ckpt, host.address, 2, form)
    new = block_names(store) - before
    [entry] = second.checkpoint.buffers
    assert new == {b.sha256 for b in entry.blocks} - before and new  # exactly the new blocks appear
    assert before <= {b.sha256 for b in entry.blocks}
    assert second.uploaded_bytes < 0.02 * first.uploaded_bytes
    assert second.deduplicated_bytes == sum(b.size for b in entry.blocks if b.sha256 in before)
    assert second.uploaded_bytes == second.checkpoint.total_bytes + sum(
        b.size for b in entry.blocks if b.sha256 in new)
    expected = buffer.sample()
    fill(buffer, EPISODES + 1, 1)
    ckpt.restore_buffers(second.checkpoint)
    assert_same_batches(buffer, [expected])


def test_dedup_survives_a_restart_of_the_checkpoint_service(store_url, big):
    from rewind_checkpoint.server import serve as serve_checkpoints

    host, buffer = big
    fill(buffer, 0, EPISODES)
    sizes = []
    for step in (1, 2):
        service = serve_checkpoints(checkpoint_config(store_url))
        try:
            with CheckpointClient(service.address, timeout=60.0) as ckpt:
                sizes.append(save_blocks(ckpt, host.address, step).uploaded_bytes)
                if step == 2:
                    found = ckpt.lookup("agent", "run-1", "latest").checkpoint
                    assert found.step == 2
        finally:
            service.stop(grace_s=0.5)
        fill(buffer, EPISODES + step - 1, 1)
    assert sizes[1] < 0.02 * sizes[0]


def test_a_missing_or_corrupt_block_is_data_loss_and_the_buffer_is_left_as_it_was(ckpt, ckpt_host, big):
    host, buffer = big
    _, store = store_of(ckpt_host)
    fill(buffer, 0, 10)
    c = save_blocks(ckpt, host.address, 10).checkpoint
    sha = c.buffers[0].blocks[0].sha256
    key = RUN.block_key(sha)
    fill(buffer, 10, 1)
    data = bytearray(store.get(key))
    data[len(data) // 2] ^= 0xFF
    store.put(key, bytes(data))
    with pytest.raises(DataLoss, match=rf"block {sha}.*sha256"):
        ckpt.restore_buffers(c)
    assert buffer.stats().episodes_added == 11
    store.delete([key])
    with pytest.raises(DataLoss, match=rf"block {sha}.*missing"):
        ckpt.restore_buffers(c)
    assert buffer.stats().episodes_added == 11
    with pytest.raises(DataLoss, match=rf"block {sha}.*missing"):
        ckpt.lookup("agent", "run-1", 10)


def test_a_save_racing_a_delete_keeps_the_blocks_it_relies_on(ckpt, ckpt_host, big, monkeypatch):
    host, buffer = big
    catalog, store = store_of(ckpt_host)
    fill(buffer, 0, 10)
    first = save_blocks(ckpt, host.address, 1).checkpoint
    shared = {b.sha256 for b in first.buffers[0].blocks}
    fill(buffer, 10, 1)
    gate = Gate(monkeypatch, after_bytes=0)  # the save has listed and pinned what the store holds
    result: list = []
    saver = threading.Thread(target=lambda: result.append(save_blocks(ckpt, host.address, 2)), daemon=True)
    saver.start()
    try:
        assert gate.reached.wait(30)
        assert shared <= catalog.pinned(RUN)
        ckpt.delete("agent/run-1/step-0000000001")  # the only checkpoint referencing them
        assert shared <= block_names(store)
    finally:
        gate.release.set()
        saver.join(60)
    [second] = result
    assert shared <= {b.sha256 for b in second.checkpoint.buffers[0].blocks}
    assert second.deduplicated_bytes == sum(b.size for b in first.buffers[0].blocks)
    assert catalog.pinned(RUN) == set()
    assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 2  # every block there and whole
    ckpt.delete("agent/run-1/step-0000000002")
    assert block_names(store) == set()  # the last checkpoint needing them took them along


def test_an_uploader_killed_mid_block_leaves_no_visible_block(store_url, big, tmp_path, monkeypatch):
    host, buffer = big
    fill(buffer, 0, 70)  # one block of ~7 MiB: past the 5 MiB part, so S3 has a multipart upload open
    store = open_store(store_url)
    args = ("--store", store_url, "--store-timeout-s", "2", "--part-mb", "5", "--staging-max-age-s", "3600")
    gate = Gate(monkeypatch, after_bytes=6 * MiB)
    service = ServiceProcess(tmp_path, *args, group="ckpt")
    errors: list = []

    def save() -> None:
        try:
            with CheckpointClient(service.address, timeout=60.0) as ckpt:
                save_blocks(ckpt, host.address, 70)
        except RewindError as exc:
            errors.append(exc.code)

    saver = threading.Thread(target=save, daemon=True)
    try:
        saver.start()
        assert gate.reached.wait(60)
        if isinstance(store, S3Store):
            # On S3 the buffer service PUTs the block itself (UploadBlocks), held mid-body here: it dies
            # too, as a preempted node takes both services down, and its connection closes mid-block.
            gate.die = True
        else:
            wait_for(lambda: any(o.size > 0 for o in store.list(RUN.blocks_prefix)), "the block's temp file")
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait()
    finally:
        gate.release.set()
        service.stop()
    saver.join(60)
    assert errors == [grpc.StatusCode.UNAVAILABLE]
    assert block_names(store) == set()  # nothing under a block's name: no partial block is ever visible
    assert not any(o.key.endswith("manifest.json") for o in store.list(RUN.prefix))

    service = ServiceProcess(tmp_path, *args, group="ckpt")
    try:
        with CheckpointClient(service.address, timeout=60.0) as ckpt:
            saved = save_blocks(ckpt, host.address, 70)
            assert saved.deduplicated_bytes == 0 and saved.uploaded_bytes > 6 * MiB
            assert block_names(store) == {b.sha256 for b in saved.checkpoint.buffers[0].blocks}
            assert ckpt.lookup("agent", "run-1", "latest").checkpoint.step == 70
    finally:
        service.stop()
    assert CheckpointKey(RUN, 70).manifest_key in {o.key for o in store.list(RUN.prefix)}


def _responses(blocks: list[tuple[str, bytes]], index_blocks: list[tuple[str, int]], index: bytes = b"index"):
    """A SnapshotBlocks stream as a buffer service would send it (or not)."""
    from rewind.buffer.v1 import buffer_pb2

    for sha, data in blocks:
        yield buffer_pb2.SnapshotBlocksResponse(block=buffer_pb2.BlockRef(sha256=sha, size=len(data)))
        yield buffer_pb2.SnapshotBlocksResponse(chunk=data)
    yield buffer_pb2.SnapshotBlocksResponse(index=buffer_pb2.BlockIndexStart(
        size=len(index), blocks=[buffer_pb2.BlockRef(sha256=s, size=n) for s, n in index_blocks], episodes_added=1))
    yield buffer_pb2.SnapshotBlocksResponse(chunk=index)


GOOD = b"rows of a block"
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.mark.parametrize(("blocks", "index_blocks", "message"), [
    ([(GOOD_SHA, GOOD[:-1] + b"?")], [(GOOD_SHA, len(GOOD))], "arrived as .* bytes with sha256"),
    ([("../../x" + "0" * 57, GOOD)], [], "not a sha256"),
    ([(GOOD_SHA, GOOD)], [], "the index does not name it"),
    ([], [(GOOD_SHA, len(GOOD))], "neither in the store nor sent"),
    ([(GOOD_SHA, GOOD), (GOOD_SHA, GOOD)], [(GOOD_SHA, len(GOOD))], "sent before"),
])
def test_a_buffer_stream_that_breaks_the_contract_fails_the_save_and_leaves_no_block(
        ckpt, ckpt_host, monkeypatch, blocks, index_blocks, message):
    catalog, store = store_of(ckpt_host)
    ckpt_host.bindings[0].servicer.direct_uploads = False  # the blocks come through the service: check its checks
    monkeypatch.setattr(BufferClient, "snapshot_blocks",
                        lambda self, stored, **kw: _responses(blocks, index_blocks))
    with pytest.raises(DataLoss, match=rf"buffers: 'buffer' at 127\.0\.0\.1:1: .*{message}"):
        save_blocks(ckpt, "127.0.0.1:1", 1)
    # A block is visible only whole and under its own name (an unused one is the sweep's).
    assert block_names(store) == ({GOOD_SHA} if "index does not" in message or "sent before" in message else set())
    assert not any(o.key.endswith("manifest.json") for o in store.list(""))
    assert catalog.pinned(RUN) == set()


def test_a_well_formed_stream_from_a_fake_buffer_commits(ckpt, ckpt_host, monkeypatch):
    catalog, store = store_of(ckpt_host)
    ckpt_host.bindings[0].servicer.direct_uploads = False
    monkeypatch.setattr(BufferClient, "snapshot_blocks",
                        lambda self, stored, **kw: _responses([] if GOOD_SHA in stored else [(GOOD_SHA, GOOD)],
                                                              [(GOOD_SHA, len(GOOD))]))
    first = save_blocks(ckpt, "127.0.0.1:1", 1)
    second = save_blocks(ckpt, "127.0.0.1:1", 2)
    assert (first.deduplicated_bytes, second.deduplicated_bytes) == (0, len(GOOD))
    assert first.uploaded_bytes - first.checkpoint.total_bytes == len(GOOD)
    assert second.uploaded_bytes == second.checkpoint.total_bytes
    assert block_names(store) == {GOOD_SHA} and catalog.pinned(RUN) == set()
