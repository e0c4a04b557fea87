"""The buffer service's memory stays flat: a freed capture goes back to the OS, whichever thread took it.

The cause this guards against (rewind_buffer/allocator.py): glibc raises its
mmap threshold to the size of the first large block freed, after which every
capture's copy of the storage comes from the arena of the gRPC thread that
served it, and each arena keeps the copy once it is freed. bench/soak.py
measures it over minutes; this test provokes it in seconds, by capturing from
16 threads at once (16 gRPC threads, so 16 arenas) round after round.
"""

from __future__ import annotations

import sys
import threading

import pytest

from rewind import BufferClient
from rewind.errors import NotFound
from rewind_buffer import allocator
from rewind_buffer.server import serve_in_process
from rewind_buffer.settings import BufferServiceSettings
from rewind_runtime.local import LocalService

MiB = 2**20
# 600 episodes. Every column of a capture's copy is at least 1.2 MB (reward, done) and at most 19.2 MB (obs):
# each is mmapped under the service's fixed 1 MiB threshold, and each fits under the 32 MiB that glibc's
# own threshold can reach, which the first freed obs copy (19.2 MB) takes it to.
STEPS, OBS_DIM, ACTION_DIM = 500, 16, 4
CAPACITY = 300_000
THREADS = 16  # the service's workers: each concurrent Capture runs on its own gRPC thread
ROUNDS = 3


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def episodes(n: int) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [{"obs": torch.randn(STEPS, OBS_DIM, generator=g), "action": torch.randn(STEPS, ACTION_DIM, generator=g),
             "reward": torch.randn(STEPS, generator=g), "done": torch.zeros(STEPS)} for _ in range(n)]


def capture_at_once(address: str, buffer: str = "buffer") -> None:
    """THREADS captures released together; each new one displaces an older (max_captures), which is freed."""
    barrier = threading.Barrier(THREADS)
    failures: list[BaseException] = []

    def capture() -> None:
        with BufferClient(address, buffer, timeout=60.0) as client:
            barrier.wait()
            try:
                client.capture()
            except BaseException as exc:  # reported by the test
                failures.append(exc)

    threads = [threading.Thread(target=capture) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the cause is glibc's malloc")
def test_captures_from_many_threads_do_not_grow_the_service():
    with LocalService(["--log-level", "WARNING", "buffer", "serve", "--buffers", "buffer", "--buffer-size",
                       str(CAPACITY), "--min-history", "0", "--storage-device", "cpu", "--workers", str(THREADS),
                       "--max-captures", "1"]) as service:
        with BufferClient(service.address, "buffer", timeout=60.0) as client:
            client.load(episodes(CAPACITY // STEPS))
            copy_bytes = client.stats().bytes
            small = client.using("small")
            small.create(buffer_size=4 * STEPS)
            small.load(episodes(4))
            small.close()
        # Warm-up: the threads, their arenas and connections, with copies (128 KB of obs) too small to
        # move glibc's threshold.
        capture_at_once(service.address, "small")
        before = rss_of(service.proc.pid)
        for _ in range(ROUNDS):
            capture_at_once(service.address)
        after = rss_of(service.proc.pid)
    # One capture is held at the end (max_captures). Without the fixed thresholds each arena keeps a
    # whole copy once it is freed: several hundred MiB here.
    assert after - before < 2 * copy_bytes, (
        f"RSS grew by {(after - before) / MiB:.0f} MiB over {ROUNDS} rounds of {THREADS} concurrent captures of "
        f"{copy_bytes / MiB:.0f} MiB, one of them held ({before / MiB:.0f} -> {after / MiB:.0f} MiB)")


def test_the_services_max_captures_and_ttl_are_the_configured_ones():
    # They bound the copies a service holds; the servicer used to replace an empty (falsy) store by a default one.
    client = serve_in_process(BufferServiceSettings(buffers=("buffer",), min_history=0, max_captures=1,
                                                    capture_ttl_s=5.0))
    try:
        client.add(episodes(1)[0])
        first, second = client.capture().capture_id, client.capture().capture_id
        with pytest.raises(NotFound, match=r"was dropped: 1 newer capture\(s\) .* \(max_captures=1 per buffer\)"):
            list(client.snapshot_stream(capture_id=first))
        assert sum(len(r.chunk) for r in client.snapshot_stream(capture_id=second)) > 0
        with pytest.raises(NotFound, match=r"expires after 5s"):
            list(client.snapshot_stream(capture_id=second))
    finally:
        client.close()


def test_the_environment_wins_over_the_services_malloc_thresholds(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert allocator.fix_malloc_thresholds() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=65536")
    assert allocator.fix_malloc_thresholds() is False
