"""Incremental buffer snapshots: content-addressed blocks, streamed only when the store lacks them.

Each test runs a real buffer service in this process and plays the checkpoint service's part with a
dict for a store: SnapshotBlocks with the names the dict holds, then a block-mode Restore from it.
The reference for "exactly as before" is the whole-snapshot path (format 1) restored into another
buffer: both restored buffers must hold identical storage and draw identical batches.
"""

from __future__ import annotations

import hashlib
import random
import sys

import grpc
import pytest
import torch

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.buffer_messages import encode_episode
from rewind.channel import make_channel
from rewind_buffer import torchrl_adapter
from rewind_buffer.blocks import row_bytes
from rewind_buffer.server import build
from rewind_runtime.local import LocalService
from tests.support.configs import SMALL
from tests.support.episodes import episode

CAPACITY = SMALL.buffer_size  # 2,000 transitions


class Service:
    """A started buffer service, its registry, a raw stub and a dict standing in for the block store."""

    def __init__(self, **overrides) -> None:
        self.host, self.registry = build(SMALL.replace(port=0, max_message_mb=16, **overrides))
        self.host.start()
        self.channel = make_channel(self.host.address, max_message_bytes=64 * 2**20)
        self.stub = buffer_pb2_grpc.BufferServiceStub(self.channel)
        self.store: dict[str, bytes] = {}
        self.rng = random.Random(0)
        self.next_id = 0

    def close(self) -> None:
        self.channel.close()
        self.host.stop(grace_s=0.5)

    def add(self, n: int = 1, name: str = "buffer", *, length: int | None = None) -> None:
        for _ in range(n):
            request = buffer_pb2.AddEpisodeRequest(buffer=name)
            encode_episode(episode(self.next_id, length or self.rng.randint(40, 160)), request.episode)
            self.stub.AddEpisode(request)
            self.next_id += 1

    def save(self, name: str = "buffer", *, capture_id: str = "", store: dict | None = None,
             between=None) -> tuple[bytes, list[tuple[str, int]], int]:
        """SnapshotBlocks into the store; returns (index bytes, the index's block refs, bytes of blocks sent)."""
        store = self.store if store is None else store
        request = buffer_pb2.SnapshotBlocksRequest(buffer=name, capture_id=capture_id, chunk_bytes=1024,
                                                   stored_blocks=sorted(store))
        index, refs, sent, current, kind = bytearray(), None, 0, None, None
        for response in self.stub.SnapshotBlocks(request):
            item = response.WhichOneof("item")
            if item == "block":
                assert response.block.sha256 not in store, "a block the store holds was sent"
                current, kind = (response.block.sha256, response.block.size, bytearray()), "block"
                store[current[0]] = current
            elif item == "index":
                kind, refs = "index", [(b.sha256, b.size) for b in response.index.blocks]
            elif kind == "block":
                current[2].extend(response.chunk)
                sent += len(response.chunk)
            else:
                index.extend(response.chunk)
            if between is not None:
                between()
        for sha, value in list(store.items()):
            if isinstance(value, tuple):  # arrived in this stream: check its name, keep its bytes
                assert hashlib.sha256(value[2]).hexdigest() == sha and len(value[2]) == value[1]
                store[sha] = bytes(value[2])
        return bytes(index), refs, sent

    def restore(self, name: str, index: bytes, refs, *, store: dict | None = None, blocks=None):
        store = self.store if store is None else store
        blocks = [(sha, size, store[sha]) for sha, size in refs] if blocks is None else blocks

        def requests():
            yield buffer_pb2.RestoreRequest(buffer=name)
            for i in range(0, len(index), 4096):
                yield buffer_pb2.RestoreRequest(chunk=index[i:i + 4096])
            for sha, size, data in blocks:
                yield buffer_pb2.RestoreRequest(block=buffer_pb2.BlockRef(sha256=sha, size=size))
                for i in range(0, len(data), 1000):
                    yield buffer_pb2.RestoreRequest(chunk=data[i:i + 1000])

        return self.stub.Restore(requests()).stats

    def restore_blob(self, name: str, source: str = "buffer") -> None:
        blob = b"".join(r.chunk for r in self.stub.Snapshot(buffer_pb2.SnapshotRequest(buffer=source)))
        self.stub.Restore(iter([buffer_pb2.RestoreRequest(buffer=name, chunk=blob)]))


@pytest.fixture
def service():
    s = Service()
    yield s
    s.close()


def assert_same_buffers(service: Service, a: str, b: str, batches: int = 3) -> None:
    """Identical used rows, counters and layout, and the next batches drawn are byte-identical."""
    x, y = service.registry.get(a), service.registry.get(b)
    assert len(x._rb.storage) == len(y._rb.storage)
    used = len(x._rb.storage)
    assert_same_rows(x, y, used)
    assert x._writer.state_dict() == y._writer.state_dict()
    assert (x.episodes_added, x.batches_sampled, x.transitions) == (y.episodes_added, y.batches_sampled,
                                                                    y.transitions)
    for _ in range(batches):
        p = service.stub.Sample(buffer_pb2.SampleRequest(buffer=a)).batch
        q = service.stub.Sample(buffer_pb2.SampleRequest(buffer=b)).batch
        assert p.SerializeToString(deterministic=True) == q.SerializeToString(deterministic=True)


def assert_same_rows(x, y, used: int) -> None:
    """Byte for byte (rows never written hold whatever the allocation held, NaN bit patterns included)."""
    for key, column in x.storage_columns().items():
        other = y.storage_columns()[key][:used]
        assert torch.equal(column[:used].contiguous().view(torch.uint8), other.contiguous().view(torch.uint8)), key


def test_block_round_trip_samples_exactly_as_the_whole_snapshot(service):
    service.add(30)  # ~3,000 steps into 2,000 slots: evictions and a wrap
    for _ in range(5):
        service.stub.Sample(buffer_pb2.SampleRequest(buffer="buffer"))
    index, refs, sent = service.save()
    assert sent == sum(size for _, size in refs) and len(refs) >= 1
    service.restore_blob("whole")
    stats = service.restore("blocks", index, refs)
    assert stats.episodes_added == 30
    assert_same_buffers(service, "whole", "blocks")


def test_only_rows_written_since_the_last_save_travel(service):
    service.add(12)
    service.save()
    first = sum(len(v) for v in service.store.values())
    service.add(1, length=50)
    index, refs, sent = service.save()
    # The new episode's 50 rows, and nothing else: everything else is referenced by name.
    assert sent == 50 * row_bytes(service.registry.get("buffer").schema)
    assert sent < 0.05 * first
    service.restore_blob("whole")
    service.restore("blocks", index, refs)
    assert_same_buffers(service, "whole", "blocks")


def test_saves_across_evictions_and_wraps_restore_exactly(service):
    saved = []
    for round_ in range(8):  # ~5 fills of the storage, a save after each ~700 steps
        service.add(7)
        index, refs, _ = service.save()
        service.restore_blob(f"whole{round_}")
        saved.append((index, refs))
    for round_, (index, refs) in enumerate(saved):
        service.restore(f"blocks{round_}", index, refs)
        assert_same_buffers(service, f"whole{round_}", f"blocks{round_}", batches=1)
        for name in (f"whole{round_}", f"blocks{round_}"):
            service.stub.DeleteBuffer(buffer_pb2.DeleteBufferRequest(buffer=name))
    # Blocks of later saves are small: the store holds far less than 8 whole buffers.
    stored = sum(len(v) for v in service.store.values())
    assert stored < 4 * CAPACITY * row_bytes(service.registry.get("buffer").schema)


def test_a_block_the_store_lost_is_sent_again_from_the_rows_it_still_holds(service):
    service.add(12)
    service.save()
    service.add(3)  # overwrites part of the first save's block: it is referenced from an offset now
    index, refs, _ = service.save()
    oldest = refs[0][0]
    lost = {k: v for k, v in service.store.items() if k != oldest}
    index, refs2, sent = service.save(store=lost)
    assert {sha for sha, _ in refs2} <= set(lost)  # the store now holds every block the index needs
    assert sent > 0
    service.restore_blob("whole")
    service.restore("blocks", index, refs2, store=lost)
    assert_same_buffers(service, "whole", "blocks")
    # The buffer adopted the resealed block: the next save sends nothing new.
    _, _, again = service.save(store=lost)
    assert again == 0


def test_a_restarted_service_dedups_against_the_blocks_it_was_restored_from(service):
    service.add(12)
    index, refs, _ = service.save()
    fresh = Service()
    try:
        fresh.store = dict(service.store)
        fresh.restore("buffer", index, refs)
        fresh.next_id = 12
        fresh.add(1, length=40)
        _, _, sent = fresh.save()
        assert sent == 40 * row_bytes(fresh.registry.get("buffer").schema)
    finally:
        fresh.close()


def test_a_capture_streams_its_own_rows_although_writes_overwrite_them_meanwhile(service):
    service.add(12)
    service.save()
    service.add(2)
    capture_id = service.stub.Capture(buffer_pb2.CaptureRequest(buffer="buffer")).capture_id
    service.restore_blob("whole")  # the state at the capture
    writes = iter(range(40))
    index, refs, _ = service.save(capture_id=capture_id, between=lambda: next(writes, None) is not None
                                  and service.add(1))
    service.restore("blocks", index, refs)
    whole, blocks = service.registry.get("whole"), service.registry.get("blocks")
    assert_same_rows(whole, blocks, len(whole._rb.storage))


@pytest.mark.parametrize("fault", ["corrupt", "missing", "extra", "reordered", "truncated"])
def test_restore_refuses_a_bad_block_and_keeps_the_old_buffer(service, fault):
    service.add(30)
    index, refs, _ = service.save(store={})
    service.add(2)  # more blocks
    index, refs, _ = service.save()
    assert len(refs) >= 2
    blocks = [(sha, size, service.store[sha]) for sha, size in refs]
    if fault == "corrupt":
        sha, size, data = blocks[0]
        blocks[0] = (sha, size, bytes([data[0] ^ 1]) + data[1:])
    elif fault == "missing":
        blocks = blocks[:-1]
    elif fault == "extra":
        blocks.append(blocks[0])
    elif fault == "reordered":
        blocks = blocks[::-1]
    else:
        sha, size, data = blocks[-1]
        blocks[-1] = (sha, size, data[:-5])
    service.add(1, name="test_buffer")
    before = service.stub.GetStats(buffer_pb2.GetStatsRequest(buffer="test_buffer")).stats
    with pytest.raises(grpc.RpcError) as err:
        service.restore("test_buffer", index, refs, blocks=blocks)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS, err.value.details()
    assert "block" in err.value.details()
    assert service.stub.GetStats(buffer_pb2.GetStatsRequest(buffer="test_buffer")).stats == before


def test_stored_blocks_must_be_sha256_names(service):
    service.add(3)
    request = buffer_pb2.SnapshotBlocksRequest(buffer="buffer", stored_blocks=["../../etc/passwd"])
    with pytest.raises(grpc.RpcError) as err:
        list(service.stub.SnapshotBlocks(request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "stored_blocks[0]" in err.value.details()


def test_an_empty_buffer_saves_an_index_with_no_blocks(service):
    index, refs, sent = service.save()
    assert (refs, sent) == ([], 0)
    stats = service.restore("copy", index, refs)
    assert (stats.transitions, stats.episodes_added) == (0, 0)


def test_restored_storage_length_is_the_index_rows(service):
    service.add(30)
    index, refs, _ = service.save()
    service.restore("blocks", index, refs)
    assert len(service.registry.get("blocks")._rb.storage) == len(service.registry.get("buffer")._rb.storage)
    torchrl_adapter.check_hooks()


def _memory(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                if k in ("VmRSS", "VmHWM")}


def _fresh_service() -> LocalService:
    return LocalService(["--log-level", "WARNING", "buffer", "serve", "--buffers", "buffer", "--buffer-size",
                         str(RSS_CAPACITY), "--min-history", "0", "--storage-device", "cpu"])


RSS_STEPS, RSS_OBS, RSS_CAPACITY = 500, 64, 400_000


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_block_restore_holds_the_storage_and_a_chunk_not_the_snapshot():
    """Peak RSS growth of the restoring service <= 1.2 x the stored bytes + 64 MiB; the whole-snapshot
    restore of the same buffer, which holds the snapshot and the storage, is measured beside it."""
    g = torch.Generator().manual_seed(0)
    data = [{"obs": torch.randn(RSS_STEPS, RSS_OBS, generator=g), "action": torch.randn(RSS_STEPS, 4, generator=g),
             "reward": torch.randn(RSS_STEPS, generator=g), "done": torch.zeros(RSS_STEPS)}
            for _ in range(RSS_CAPACITY // RSS_STEPS)]
    with _fresh_service() as source, BufferClient(source.address, "buffer", timeout=120) as client:
        for first in range(0, len(data), 100):
            client.load(data[first:first + 100])
        stored = client.stats().bytes
        blob = b"".join(r.chunk for r in client.snapshot_stream())
        blocks, index, current = {}, bytearray(), None
        for response in client.snapshot_blocks():
            item = response.WhichOneof("item")
            if item == "block":
                current = blocks.setdefault(response.block.sha256, bytearray())
            elif item == "index":
                refs, current = [(b.sha256, b.size) for b in response.index.blocks], index
            else:
                current.extend(response.chunk)
    del data
    growth = {}
    for mode in ("blocks", "whole"):
        with _fresh_service() as target, BufferClient(target.address, "buffer", timeout=120) as client:
            before = _memory(target.proc.pid)["VmRSS"]
            if mode == "blocks":
                stats = client.restore_blocks(
                    [bytes(index)], ((sha, size, (bytes(blocks[sha][i:i + 2**20]) for i in range(0, size, 2**20)))
                                     for sha, size in refs))
            else:
                stats = client.restore(blob)
            assert stats.transitions == RSS_CAPACITY
            growth[mode] = _memory(target.proc.pid)["VmHWM"] - before
    assert growth["blocks"] <= 1.2 * stored + 64 * 2**20, (growth, stored)
    assert growth["whole"] > growth["blocks"] + 0.5 * stored, (growth, stored)  # the snapshot it no longer holds


def test_an_index_restored_as_if_it_were_a_whole_snapshot_says_how_to_restore_it(service):
    service.add(5)
    index, refs, _ = service.save()
    with pytest.raises(grpc.RpcError) as err:
        service.restore("copy", index, refs, blocks=[])
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "block index" in err.value.details() and "RestoreBuffers" in err.value.details()
    assert "copy" not in [b.name for b in service.stub.ListBuffers(buffer_pb2.ListBuffersRequest()).buffers]
