"""The buffer service's budget: buffers, transitions, storage, restore streams and captures are bounded.

Every refusal is its specific status (never INTERNAL), names the field, and
leaves every buffer as it was; the service keeps answering everyone.
"""

from __future__ import annotations

import copy
import io
import struct

import grpc
import pytest
import torch

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2
from rewind.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted
from rewind_buffer import snapshot, torchrl_adapter
from rewind_buffer.captures import Capture, CaptureStore
from rewind_buffer.server import serve
from rewind_buffer.settings import BufferServiceSettings
from tests.support.configs import SMALL
from tests.support.episodes import episode

MiB = 2**20


@pytest.fixture
def start():
    """Start buffer services with SMALL's buffer settings plus the given limits; a client of each."""
    hosts, clients = [], []

    def start_one(**limits) -> BufferClient:
        host = serve(SMALL.replace(port=0, max_message_mb=4, **limits))
        hosts.append(host)
        clients.append(BufferClient(host.address, "buffer", timeout=30.0, max_message_bytes=4 * MiB))
        return clients[-1]

    yield start_one
    for client in clients:
        client.close()
    for host in hosts:
        host.stop(grace_s=0.5)


def snapshot_bytes(client: BufferClient) -> bytes:
    out = io.BytesIO()
    client.snapshot(out)
    return out.getvalue()


def names(client: BufferClient) -> list[str]:
    return [b.name for b in client.list_buffers()]


def rss_bytes() -> int:
    """This process's resident set (the in-process service shares it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


# -- settings ----------------------------------------------------------------


def test_settings_whose_start_up_buffers_exceed_the_budget_are_refused():
    with pytest.raises(InvalidArgument, match=r"max_transitions: 3,000 is below the 4,000 transitions"):
        BufferServiceSettings(buffer_size=2000, min_history=0, max_transitions=3000)
    with pytest.raises(InvalidArgument, match="max_buffers: 1 is fewer than the 2 buffers"):
        BufferServiceSettings(max_buffers=1)
    assert BufferServiceSettings().max_transitions >= 2 * BufferServiceSettings().buffer_size


# -- transitions and buffers -------------------------------------------------


def test_create_and_reset_over_the_transitions_budget_are_resource_exhausted_and_change_nothing(client, stub):
    client.add(episode(0, 60))
    before = snapshot_bytes(client)
    # Two buffers of 2,000 reserve 4,000; a reset replaces one of them, so 2,000 more are left to it.
    for call, left in ((lambda: client.using("huge").create(buffer_size=2**40), "49,996,000"),
                       (lambda: client.reset(buffer_size=2**40), "49,998,000")):
        with pytest.raises(ResourceExhausted, match=rf"^buffer_size: 1,099,511,627,776 transitions exceed the "
                                                    rf"{left} left .*max_transitions=50,000,000"):
            call()
    assert names(client) == ["buffer", "test_buffer"]
    assert snapshot_bytes(client) == before
    assert client.add(episode(1, 60)) == 2


def test_the_number_of_buffers_is_capped_and_restore_of_a_new_name_counts(start):
    client = start(max_buffers=3)
    client.add(episode(0, 60))
    blob = snapshot_bytes(client)
    client.using("third").create()
    for call in (lambda: client.using("fourth").create(), lambda: client.using("fourth").reset(),
                 lambda: client.using("fourth").restore(blob)):
        with pytest.raises(ResourceExhausted, match=r"^buffer: the service holds its maximum of 3 buffers"):
            call()
    assert names(client) == ["buffer", "test_buffer", "third"]
    assert client.using("third").restore(blob).episodes == 1  # replacing a buffer needs no new room
    client.using("third").delete()
    assert client.using("fourth").restore(blob).episodes == 1


def test_restore_of_a_new_name_counts_against_the_transitions_budget(start):
    client = start(max_transitions=2 * 2000 + 2500)
    client.add(episode(0, 60))
    blob = snapshot_bytes(client)
    assert client.using("copy").restore(blob).settings.buffer_size == 2000
    with pytest.raises(ResourceExhausted, match=r"^buffer_size: 2,000 transitions exceed the 500 left"):
        client.using("copy2").restore(blob)
    assert "copy2" not in names(client)
    assert client.using("copy").restore(blob).episodes == 1  # over itself: its own reservation is reused


# -- storage -----------------------------------------------------------------


def test_storage_over_the_byte_budget_is_refused_at_the_first_episode_and_the_buffer_stays_usable(start):
    client = start(max_storage_mb=1)
    big = client.using("big")
    big.create(buffer_size=100_000)  # 100,000 x 36 bytes > 1 MiB, known only at the first episode
    with pytest.raises(ResourceExhausted, match=r"^buffer_size: its storage needs 3.4 MiB but 1.0 MiB are left "
                                                r".*max_storage_mb=1"):
        big.add(episode(0, 60))
    client.add(episode(0, 60))  # 2,000 x 36 bytes counted now
    with pytest.raises(ResourceExhausted, match=r"needs 3.4 MiB but 0.9 MiB are left"):
        big.load([episode(0, 60)])
    stats = big.stats()
    assert (stats.episodes, stats.transitions, stats.episodes_added, stats.bytes, stats.device) == (0, 0, 0, 0, "")
    assert names(client) == ["buffer", "test_buffer", "big"]
    big.reset(buffer_size=5000)
    assert big.add(episode(0, 60)) == 1 and client.add(episode(1, 60)) == 2


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("can't allocate memory"),
                                   torch.OutOfMemoryError("CUDA out of memory")], ids=type)
def test_a_failed_allocation_is_resource_exhausted_and_the_buffer_stays_empty_and_usable(client, monkeypatch, error):
    real = torchrl_adapter.allocate

    def fail(storage, row):
        raise error

    monkeypatch.setattr(torchrl_adapter, "allocate", fail)
    with pytest.raises(ResourceExhausted, match=r"^buffer_size: 2,000 transitions .* cannot be allocated"):
        client.add(episode(0, 60))
    with pytest.raises(ResourceExhausted, match="cannot be allocated"):
        client.load([episode(0, 60), episode(1, 60)])
    assert client.stats().episodes == 0 and names(client) == ["buffer", "test_buffer"]
    monkeypatch.setattr(torchrl_adapter, "allocate", real)
    assert client.add(episode(0, 60)) == 1 and client.add(episode(1, 60)) == 2
    client.sample()


def _overcommit_refuses_huge_allocations() -> bool:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() in ("0", "2")
    except OSError:
        return False


@pytest.mark.skipif(not _overcommit_refuses_huge_allocations(), reason="the kernel grants any allocation here")
def test_a_buffer_larger_than_memory_without_a_byte_budget_is_resource_exhausted_not_internal(start, stub):
    client = start(max_storage_mb=0, max_transitions=2**41)
    huge = client.using("huge")
    huge.create(buffer_size=2**40)  # 36 TiB of storage once the schema is known
    with pytest.raises(ResourceExhausted, match=r"^buffer_size: 1,099,511,627,776 transitions .* cannot be allocated"):
        huge.add(episode(0, 60))
    assert [(b.name, b.episodes, b.bytes) for b in client.list_buffers()] == [
        ("buffer", 0, 0), ("test_buffer", 0, 0), ("huge", 0, 0)]
    assert huge.stats().device == "" and huge.reset(buffer_size=1000)[0].settings.buffer_size == 1000
    assert huge.add(episode(0, 60)) == 1
    assert huge.delete() == 1


# -- restore streams ---------------------------------------------------------


def big_snapshot_head(base: dict, rows: int, obs_dim: int) -> tuple[bytes, int]:
    """A valid prefix and header for one episode of `rows` steps of obs_dim floats; returns it and the tensor bytes.

    The tensors themselves are never built: the tests stream zeros for them.
    """
    header = copy.deepcopy(base)
    header["settings"].update(buffer_size=rows, min_history=0)
    header["schema"]["obs"]["shape"] = [obs_dim]
    header.update(episodes_added=1, batches_sampled=0, transitions=rows,
                  writer={"cursor": rows, "episodes": [[0, 0, rows]], "evicted": 0})
    shapes = {"obs": [rows, obs_dim], "action": [rows, 2], "reward": [rows], "done": [rows], "episode": [rows]}
    for entry in header["tensors"]:
        if entry["key"] in shapes:
            entry["shape"] = shapes[entry["key"]]
            entry["nbytes"] = torch.Size(shapes[entry["key"]]).numel() * (8 if entry["key"] == "episode" else 4)
    head = json_bytes(header)
    return snapshot.MAGIC + struct.pack("<Q", len(head)) + head, sum(e["nbytes"] for e in header["tensors"])


def json_bytes(value) -> bytes:
    import json

    return json.dumps(value, separators=(",", ":")).encode()


def stream(head: bytes, body_bytes: int, tail: bytes = b"\0" * 32):
    """`head`, `body_bytes` zero bytes in 1 MiB chunks (one object, reused: no copy held), then `tail`."""
    yield head
    zeros = bytes(MiB)
    for _ in range(body_bytes // MiB):
        yield zeros
    yield bytes(body_bytes % MiB)
    yield tail


def base_header(client: BufferClient) -> dict:
    client.add(episode(0, 60))
    header, _ = snapshot.decode(snapshot_bytes(client))
    return header


def assert_memory_returned(before: int) -> None:
    after = rss_bytes()
    assert after <= before * 1.10, f"RSS grew from {before / MiB:.0f} MiB to {after / MiB:.0f} MiB"


def test_junk_over_the_restore_cap_is_resource_exhausted_and_memory_returns(start):
    client = start(max_transitions=10_000, max_storage_mb=1)
    header = base_header(client)
    header_cap, stream_cap = snapshot.restore_caps(10_000, MiB)
    # The header: its fixed part, the writer table of the episodes' origins (1,024 writers of 3,200 bytes at
    # most), and 24 + 34 bytes per transition (the writer's episode list, the episodes' origins).
    assert (header_cap, stream_cap) == (64 * 1024 + 1024 * 3_200 + (24 + 34) * 10_000,
                                        16 + header_cap + MiB + 64 * 1024 + 32)
    junk_head = snapshot.MAGIC + struct.pack("<Q", 200 * MiB)
    before = rss_bytes()
    with pytest.raises(ResourceExhausted, match=rf"^chunk: the snapshot's header declares 209,715,200 bytes, over "
                                                rf"the cap of {header_cap:,}"):
        client.using("junk").restore(stream(junk_head, 200 * MiB))
    # A well-formed header for 200 MB of tensors: refused before any of them is taken.
    head, body = big_snapshot_head(header, rows=50_000, obs_dim=1000)
    with pytest.raises(ResourceExhausted, match=r"^buffer_size: 50,000 transitions exceed the 6,000 left"):
        client.using("junk").restore(stream(head, body))
    assert_memory_returned(before)
    assert names(client) == ["buffer", "test_buffer"] and client.add(episode(1, 60)) == 2


def test_junk_under_the_cap_with_a_wrong_hash_is_data_loss_and_memory_returns(start):
    client = start(max_transitions=100_000, max_storage_mb=512)
    header = base_header(client)
    head, body = big_snapshot_head(header, rows=50_000, obs_dim=1000)
    assert 190 * MiB < body < snapshot.restore_caps(100_000, 512 * MiB)[1]
    # Warm gRPC's and the allocator's pools up with a smaller refused restore (48 MB) first: they grow
    # by about 20 MB once, whatever the stream's size, which is not what this test is about.
    with pytest.raises(DataLoss):
        client.using("junk").restore(stream(*big_snapshot_head(header, rows=12_500, obs_dim=1000)))
    before = rss_bytes()
    with pytest.raises(DataLoss, match="sha256 mismatch"):
        client.using("junk").restore(stream(head, body))
    assert_memory_returned(before)
    before = rss_bytes()
    with pytest.raises(DataLoss, match="runs past"):  # more than the header declares: refused at once
        client.using("junk").restore(stream(head, body + 10 * MiB))
    assert_memory_returned(before)
    assert names(client) == ["buffer", "test_buffer"] and client.add(episode(1, 60)) == 2


def test_a_snapshot_restores_under_its_own_exact_cap(start):
    # The caps leave room for the largest snapshot the budget allows: a full buffer of max_transitions.
    client = start(max_transitions=2 * 2000 + 500, max_storage_mb=1)
    big = client.using("test_buffer")
    big.reset(buffer_size=2500, min_history=0)
    big.load([episode(i, 500) for i in range(5)])
    blob = snapshot_bytes(big)
    assert len(blob) < snapshot.restore_caps(4500, MiB)[1]
    assert big.restore(blob).transitions == 2500


# -- captures ----------------------------------------------------------------


def capture_stream(stub, buffer: str, capture_id: str) -> bytes:
    request = buffer_pb2.SnapshotRequest(buffer=buffer, capture_id=capture_id)
    return b"".join(r.chunk for r in stub.Snapshot(request))


def test_captures_of_other_buffers_never_stop_a_capture(client, stub):
    client.add(episode(0, 60))
    for _ in range(10):
        stub.Capture(buffer_pb2.CaptureRequest(buffer="test_buffer"))
    capture = stub.Capture(buffer_pb2.CaptureRequest(buffer="buffer", expect_episodes_added=1))
    assert capture.episodes_added == 1
    assert capture_stream(stub, "buffer", capture.capture_id) == snapshot_bytes(client)


def test_a_new_capture_drops_the_oldest_waiting_one_of_its_buffer(client, stub):
    from rewind_buffer.captures import MAX_CAPTURES

    ids = []
    for i in range(MAX_CAPTURES + 1):
        client.add(episode(i, 60))
        ids.append(stub.Capture(buffer_pb2.CaptureRequest(buffer="buffer")).capture_id)
    newest = snapshot.decode(capture_stream(stub, "buffer", ids[-1]))[0]
    assert newest["episodes_added"] == MAX_CAPTURES + 1
    with pytest.raises(grpc.RpcError) as info:
        capture_stream(stub, "buffer", ids[0])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details().startswith(f"capture_id: capture {ids[0]!r} was dropped: {MAX_CAPTURES} newer")
    for capture_id in ids[1:-1]:
        assert capture_stream(stub, "buffer", capture_id)


def test_captures_expire_after_their_ttl():
    now = [0.0]
    store = CaptureStore(limit=2, ttl_s=60.0, clock=lambda: now[0])
    state = object()
    kept, expiring = store.put(Capture("a", state)), store.put(Capture("b", state))
    now[0] = 30.0
    kept = store.put(Capture("a", state))
    now[0] = 61.0
    assert store.take(kept, "a").state is state
    with pytest.raises(NotFound, match=r"^capture_id: capture .* was dropped: it expired, not streamed within "
                                       r"capture_ttl_s=60s"):
        store.take(expiring, "b")
    with pytest.raises(NotFound, match="^capture_id: no capture 'nope'"):
        store.take("nope", "a")
    assert len(store) == 0
