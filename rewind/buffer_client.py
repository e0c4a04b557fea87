"""BufferClient: TD-MPC2's replay-buffer API, served by the buffer service.

    from rewind import BufferClient
    buffer = BufferClient("127.0.0.1:50051")         # the service's `buffer`
    buffer.add(episode)                               # TensorDict (L, ...)
    if buffer.ready():
        obs, action, reward, done = buffer.sample()   # (H+1, B, ...), (H, B, ...)
    for obs, action, reward, done in buffer.batches(prefetch=4):
        ...                                           # streamed, sampled ahead
"""

from __future__ import annotations

import io
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING

import grpc

from rewind import addresses
from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.channel import DEFAULT_MAX_MESSAGE_BYTES
from rewind.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    RewindError,
    from_rpc_error_at,
)
from rewind.security import ClientSecurity
from rewind.service_client import ServiceClient

if TYPE_CHECKING:
    import torch

    from rewind.buffer_messages import BatchTuple

DEFAULT_ADDRESS = addresses.BUFFER_ADDRESS
DEFAULT_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 600.0
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
LOAD_MESSAGE_BYTES = 1024 * 1024


def _buffer_messages():
    """rewind.buffer_messages, imported on first use: episodes and batches are torch tensors, and a process
    that only moves snapshots and blocks (the checkpoint service) need not load torch for them."""
    from rewind import buffer_messages as module

    return module


def _error(exc: grpc.RpcError, address: str) -> RewindError:
    return from_rpc_error_at(exc, BufferClient.SERVICE, address)


def _episodes_of(data) -> list[Mapping[str, torch.Tensor]]:
    """Split load()'s input into episodes: a (N, L) TensorDict/mapping, or a sequence of episodes."""
    if isinstance(data, Mapping) or hasattr(data, "batch_size"):
        keys = list(data.keys())
        if not keys:
            raise InvalidArgument("episodes: no fields; expected obs, action, reward, done")
        n = data[keys[0]].shape[0]
        return [{k: data[k][i] for k in keys} for i in range(n)]
    return list(data)


class StatsView:
    """The seed's read-outs (ready, capacity, num_eps), from whatever stats() a client has."""

    def stats(self) -> buffer_pb2.BufferStats:
        raise NotImplementedError

    def ready(self) -> bool:
        """True once the buffer holds min_history transitions."""
        return self.stats().ready

    @property
    def capacity(self) -> int:
        """Capacity in transitions."""
        return self.stats().settings.buffer_size

    @property
    def num_eps(self) -> int:
        """Episodes currently stored."""
        return self.stats().episodes


class BatchStream:
    """An iterator over streamed batches, decoded ahead in a background thread.

    Close it (or use it as a context manager) to cancel the stream.
    """

    def __init__(self, call, prefetch: int, stall_timeout: float, address: str) -> None:
        self._call = call
        self._address = address
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stall_timeout = stall_timeout
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="rewind-batches", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for response in self._call:
                item = _buffer_messages().decode_batch(response.batch)
                while not self._done.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._done.is_set():
                    return
            self._queue.put(StopIteration())
        except grpc.RpcError as exc:
            if not self._done.is_set():
                self._queue.put(_error(exc, self._address))

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> BatchTuple:
        if self._done.is_set():
            raise StopIteration
        try:
            item = self._queue.get(timeout=self._stall_timeout)
        except queue.Empty:
            self.close()
            raise DeadlineExceeded(
                f"no batch arrived for {self._stall_timeout:.0f}s; is the buffer service overloaded?"
            ) from None
        if isinstance(item, BaseException):
            self._done.set()
            raise item
        return item

    def close(self) -> None:
        """Cancel the stream and stop the background reader."""
        self._done.set()
        self._call.cancel()

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class BufferClient(StatsView, ServiceClient):
    """Client of one named buffer in a buffer service, with TD-MPC2's API.

    Args:
        address: "host:port" of the buffer service.
        buffer: which named buffer this client uses ("buffer", "test_buffer").
        timeout: deadline in seconds for each unary call.
        max_message_bytes: message limit; keep it equal to the service's.
        on_close: called by close() (see ServiceClient).
        security: token and TLS (default: from REWIND_TOKEN_FILE and REWIND_TLS_*).
        generation: the run generation every write is stamped with (0: unstamped); see add().

    Every call has a deadline; calls are retried only when the service is
    UNAVAILABLE. Failures raise rewind.errors classes (NotFound, ...).
    """

    SERVICE = "buffer service"

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        buffer: str = "buffer",
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_close: Callable[[], None] | None = None,
        security: ClientSecurity | None = None,
        generation: int = 0,
    ) -> None:
        super().__init__(address, timeout=timeout, max_message_bytes=max_message_bytes, on_close=on_close,
                         security=security)
        self.buffer = buffer
        self.generation = generation
        self._stub = buffer_pb2_grpc.BufferServiceStub(self._channel)

    def using(self, buffer: str) -> BufferClient:
        """A client for another named buffer of the same service (shares nothing)."""
        return BufferClient(self.address, buffer, timeout=self.timeout, max_message_bytes=self.max_message_bytes,
                            security=self.security, generation=self.generation)

    # -- TD-MPC2's API -------------------------------------------------------

    def add(self, td, routing: buffer_pb2.RoutingKey | None = None, generation: int = 0,
            policy_version: int = 0, timeout: float | None = None) -> int:
        """Add one episode (TensorDict or mapping, shape (L, ...)); returns num_eps.

        Args:
            routing: the key a sharded client routed it by (ShardedBufferClient sets it).
            generation: the run generation this writer belongs to (0: the client's `generation`). A buffer
                that a newer generation wrote to refuses it with FailedPrecondition.
            policy_version: the version of the policy the episode was collected with (0: unknown, or random
                actions). The buffer keeps it, with the routing key's writer and index and the generation,
                until the episode is evicted; stats().writers summarises them per writer.
            timeout: seconds for the call (default: the client's); a rate limiter holds the insert back at most
                until a little before it ends, then answers DeadlineExceeded with reason RATE_LIMITED.
        """
        request = buffer_pb2.AddEpisodeRequest(buffer=self.buffer, routing=routing,
                                               generation=generation or self.generation,
                                               policy_version=policy_version)
        _buffer_messages().encode_episode(td, request.episode)
        self._check_size(request.ByteSize(), "episode")
        return self._call(self._stub.AddEpisode, request, timeout=timeout or self.timeout).num_episodes

    def load(self, td, routing: Sequence[buffer_pb2.RoutingKey] = (), generation: int = 0,
             policy_versions: Sequence[int] = ()) -> int:
        """Add many episodes at once: a (N, L, ...) TensorDict, or a sequence of episodes.

        All are validated before any is stored. Returns num_eps.

        Args:
            routing: the keys a sharded client routed them by, one per episode (ShardedBufferClient sets them).
            generation: as add()'s.
            policy_versions: the policy version each episode was collected with, as add()'s policy_version:
                none (all 0), or one per episode.
        """
        episodes = _episodes_of(td)
        if routing and len(routing) != len(episodes):
            raise InvalidArgument(f"routing: {len(routing)} keys for {len(episodes)} episodes")
        if policy_versions and len(policy_versions) != len(episodes):
            raise InvalidArgument(f"policy_versions: {len(policy_versions)} versions for {len(episodes)} episodes; "
                                  "give one per episode, or none")
        requests = self._load_requests(episodes, list(routing), generation or self.generation, list(policy_versions))
        return self._call(self._stub.LoadEpisodes, requests, timeout=max(self.timeout, TRANSFER_TIMEOUT_S)).num_episodes

    def _load_requests(self, episodes: list, routing: list, generation: int, policy_versions: list
                       ) -> Iterator[buffer_pb2.LoadEpisodesRequest]:
        # About LOAD_MESSAGE_BYTES per message: small enough that the service
        # decodes one while this side encodes the next, large enough that
        # per-message overhead stays small for short episodes.
        request = buffer_pb2.LoadEpisodesRequest(buffer=self.buffer, generation=generation)
        pending = 0
        for i, episode in enumerate(episodes):
            size = sum(t.numel() * t.element_size() for t in episode.values())
            self._check_size(size, f"episodes[{i}]")
            if request.episodes and pending + size > min(LOAD_MESSAGE_BYTES, self.max_message_bytes // 2):
                yield request
                request, pending = buffer_pb2.LoadEpisodesRequest(), 0
            _buffer_messages().encode_episode(episode, request.episodes.add())
            if routing:
                request.routing.append(routing[i])
            if policy_versions:
                request.policy_versions.append(policy_versions[i])
            pending += size
        yield request

    def sample(self) -> BatchTuple:
        """One batch: obs (H+1, B, ...), action (H, B, ...), reward (H, B, 1), done (H, B, 1)."""
        return _buffer_messages().decode_batch(self.sample_message())

    def sample_message(self, sequences: int | None = None, timeout: float | None = None) -> buffer_pb2.Batch:
        """One batch as sent, of `sequences` sequences (default batch_size), with what it was drawn from
        (sampleable_starts, sampleable_episodes): a shard's share of a sharded batch."""
        request = buffer_pb2.SampleRequest(buffer=self.buffer, sequences=sequences)
        return self._call(self._stub.Sample, request, timeout=timeout or self.timeout).batch

    def sample_sequences(self, counts: Iterable[int]):
        """A SampleSequences stream: one Batch message per count, in order, as `counts` yields them.

        Returns the call: iterate it for SampleSequencesResponse messages; cancel() ends it. Failures
        raise grpc.RpcError (ShardedBufferClient turns them into shard losses).
        """
        def requests() -> Iterator[buffer_pb2.SampleSequencesRequest]:
            first = True
            for count in counts:
                yield buffer_pb2.SampleSequencesRequest(buffer=self.buffer if first else "", sequences=count)
                first = False

        return self._stub.SampleSequences(requests())

    # -- beyond the seed -----------------------------------------------------

    def batches(self, prefetch: int = 4, num_batches: int = 0) -> BatchStream:
        """Stream batches, sampled `prefetch` ahead on the server and decoded ahead here.

        Args:
            prefetch: batches kept in flight (1..64).
            num_batches: stop after this many; 0 streams until closed.

        Raises:
            FailedPrecondition: on the first next() if the buffer is not ready.
            DeadlineExceeded: no batch arrived within `timeout` seconds.
        """
        request = buffer_pb2.SampleStreamRequest(buffer=self.buffer, prefetch=prefetch, num_batches=num_batches)
        # The stream itself may run for hours; a stall longer than `timeout` is the deadline.
        call = self._stub.SampleStream(request)
        return BatchStream(call, prefetch, self.timeout, self.address)

    def __iter__(self) -> Iterator[BatchTuple]:
        return self.batches()

    def stats(self, timeout: float | None = None) -> buffer_pb2.BufferStats:
        """Capacity, transitions, episodes, readiness, device, bytes, counters and where the episodes came
        from per writer (`writers`; see writers()), within `timeout` (default the client's)."""
        request = buffer_pb2.GetStatsRequest(buffer=self.buffer)
        return self._call(self._stub.GetStats, request, timeout=timeout or self.timeout).stats

    def writers(self) -> dict[str, buffer_pb2.WriterStats]:
        """Where the stored episodes came from, per writer (the routing key's writer; "" for episodes added
        without one): its episodes stored and ever added, newest index, generation, the newest and oldest
        policy versions among its stored episodes and its latest episode's policy version.

        A learner's policy lag for a writer is its own weights version minus `latest_policy_version`.
        """
        return {w.writer: w for w in self.stats().writers}

    def list_buffers(self) -> list[buffer_pb2.BufferStats]:
        """Stats of every buffer in the service."""
        return list(self._call(self._stub.ListBuffers, buffer_pb2.ListBuffersRequest(), timeout=self.timeout).buffers)

    def versions(self) -> dict[str, str]:
        """The service's versions (python, torch, tensordict, torchrl, rewind) and the newest snapshot_format
        it restores; empty from a service older than version records."""
        response = self._call(self._stub.ListBuffers, buffer_pb2.ListBuffersRequest(), timeout=self.timeout)
        return dict(response.versions)

    def create(self, **settings: int | float | str | bool) -> buffer_pb2.BufferStats:
        """Create this client's buffer with optional settings (BufferSettings' fields: buffer_size, batch_size,
        min_history, horizon, max_episode_length, and the rate limiter's samples_per_insert,
        min_size_to_sample, error_buffer, inserts_wait).

            client.create(buffer_size=100_000, samples_per_insert=4.0, min_size_to_sample=1_000,
                          error_buffer="2000", max_episode_length=500)

        Raises:
            AlreadyExists: the buffer exists.
        """
        request = buffer_pb2.CreateBufferRequest(buffer=self.buffer, settings=buffer_pb2.BufferSettings(**settings))
        return self._call(self._stub.CreateBuffer, request, timeout=self.timeout).stats

    def reset(self, **settings: int | float | str | bool) -> tuple[buffer_pb2.BufferStats, int]:
        """Replace this client's buffer with an empty one (creating it if missing); returns (stats, episodes dropped).

        Args:
            **settings: as create(); the others take the service's defaults.
        """
        request = buffer_pb2.ResetBufferRequest(buffer=self.buffer, settings=buffer_pb2.BufferSettings(**settings))
        response = self._call(self._stub.ResetBuffer, request, timeout=self.timeout)
        return response.stats, response.episodes_dropped

    def set_rate_limiter(self, paused: bool | None = None, **settings: float | int | str | bool
                         ) -> buffer_pb2.BufferStats:
        """Change this buffer's rate limiter: new settings, a pause, or the end of one; returns its stats.

        New settings, and the end of a pause, start the limiter's counts again from the transitions stored
        (as if they had come in at the ratio), so that preloaded or restored data holds no insert back.

            client.set_rate_limiter(paused=True)    # preload freely
            client.load(demonstrations)
            client.set_rate_limiter(paused=False)
            client.set_rate_limiter(samples_per_insert=8.0, error_buffer="4000")

        Args:
            paused: True pauses the limiter (every call goes through, the counts go on); False ends a pause.
            **settings: samples_per_insert, min_size_to_sample, error_buffer, inserts_wait; unset ones stay.

        Raises:
            InvalidArgument: settings that are malformed or could deadlock (nothing changes).
            FailedPrecondition: a pause asked of a buffer with no limiter.
        """
        change = buffer_pb2.RateLimiterChange(paused=paused)
        if settings:
            change.settings.CopyFrom(buffer_pb2.BufferSettings(**settings))
        request = buffer_pb2.SetRateLimiterRequest(buffer=self.buffer, change=change)
        return self._call(self._stub.SetRateLimiter, request, timeout=self.timeout).stats

    def delete(self) -> int:
        """Remove this client's buffer from the service; returns the episodes it held.

        Raises:
            NotFound: no such buffer.
        """
        request = buffer_pb2.DeleteBufferRequest(buffer=self.buffer)
        return self._call(self._stub.DeleteBuffer, request, timeout=self.timeout).episodes_dropped

    def snapshot(self, dest: str | os.PathLike | IO[bytes], timeout: float = TRANSFER_TIMEOUT_S) -> int:
        """Write the buffer's full contents to a file path or binary file; returns bytes written."""
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as f:
                return self.snapshot(f, timeout=timeout)
        written = 0
        for response in self.snapshot_stream(timeout=timeout):
            dest.write(response.chunk)
            written += len(response.chunk)
        return written

    def capture(self, expect_episodes_added: int = 0) -> buffer_pb2.CaptureResponse:
        """Pin the buffer's state now, to be streamed later by snapshot_stream(capture_id=...).

        The pause copies no rows (the service copies a row aside only before a write would change
        one the capture has not streamed yet); adds and samples continue afterwards.
        """
        request = buffer_pb2.CaptureRequest(buffer=self.buffer, expect_episodes_added=expect_episodes_added)
        return self._call(self._stub.Capture, request, timeout=self.timeout)

    def snapshot_stream(
        self, expect_episodes_added: int = 0, timeout: float = TRANSFER_TIMEOUT_S, capture_id: str = ""
    ) -> Iterator[buffer_pb2.SnapshotResponse]:
        """Stream the buffer's snapshot: consecutive chunks, each with the blob's size and episode count.

        Args:
            expect_episodes_added: when > 0, refuse unless the buffer has seen
                exactly this many episodes (so the snapshot matches a step).
            timeout: deadline for the whole stream, seconds.
            capture_id: stream this earlier capture() instead of the current state.

        Raises:
            FailedPrecondition: expect_episodes_added did not match.
            NotFound: an unknown, expired or already streamed capture_id.
        """
        request = buffer_pb2.SnapshotRequest(buffer=self.buffer, expect_episodes_added=expect_episodes_added,
                                             capture_id=capture_id)
        return self._stream(self._stub.Snapshot, request, timeout)

    def snapshot_blocks(
        self, stored_blocks: Iterable[str] = (), *, capture_id: str = "", expect_episodes_added: int = 0,
        chunk_bytes: int = 0, timeout: float | None = TRANSFER_TIMEOUT_S,
    ) -> Iterator[buffer_pb2.SnapshotBlocksResponse]:
        """Stream the buffer (or a capture) as content-addressed blocks, then its block index.

        Only blocks not named in `stored_blocks` travel: each opens with a `block`
        (its sha256 and size) followed by its `chunk`s. Last comes `index` (its
        size, every block it references in restore order, the episode count and
        the service's versions) followed by the index's chunks.

        Args:
            stored_blocks: sha256 names of the blocks the caller's store already holds.
            capture_id: stream this earlier capture() instead of the current state.
            expect_episodes_added: as in snapshot_stream (not with capture_id).
            chunk_bytes: bytes per chunk; 0 means 1 MiB.
            timeout: deadline for the whole stream, seconds.
        """
        request = buffer_pb2.SnapshotBlocksRequest(
            buffer=self.buffer, capture_id=capture_id, expect_episodes_added=expect_episodes_added,
            chunk_bytes=chunk_bytes, stored_blocks=list(stored_blocks))
        return self._stream(self._stub.SnapshotBlocks, request, timeout)

    def upload_blocks(
        self, stored_blocks: Iterable[str],
        grant: Callable[[Sequence[buffer_pb2.BlockRef]], Iterable[buffer_pb2.BlockGrant]],
        *, capture_id: str = "", expect_episodes_added: int = 0, chunk_bytes: int = 0,
        timeout: float | None = TRANSFER_TIMEOUT_S,
    ) -> Iterator[buffer_pb2.UploadBlocksResponse]:
        """As snapshot_blocks, but the service PUTs the blocks the store lacks straight to the store.

        The first response (`needed`) names those blocks; `grant` is called with
        them and returns one presigned PUT per block (BlockGrant), which this
        client sends back. Then come an `uploaded` per block, as each PUT
        succeeds, and the index as in snapshot_blocks.

        Args:
            stored_blocks: sha256 names of the blocks the caller's store already holds.
            grant: makes the presigned PUTs (the caller holds the store's credentials).
            capture_id, expect_episodes_added, chunk_bytes, timeout: as in snapshot_blocks.
        """
        start = buffer_pb2.SnapshotBlocksRequest(
            buffer=self.buffer, capture_id=capture_id, expect_episodes_added=expect_episodes_added,
            chunk_bytes=chunk_bytes, stored_blocks=list(stored_blocks))
        answers: queue.Queue[buffer_pb2.BlockGrants | None] = queue.Queue()

        def requests() -> Iterator[buffer_pb2.UploadBlocksRequest]:
            yield buffer_pb2.UploadBlocksRequest(start=start)
            grants = answers.get()
            if grants is not None:
                yield buffer_pb2.UploadBlocksRequest(grants=grants)

        def responses() -> Iterator[buffer_pb2.UploadBlocksResponse]:
            try:
                for response in self._stream(self._stub.UploadBlocks, requests(), timeout):
                    if response.WhichOneof("item") == "needed":
                        answers.put(buffer_pb2.BlockGrants(grants=list(grant(response.needed.blocks))))
                    yield response
            finally:
                answers.put(None)  # a call that ended before the grants must not leave requests() waiting

        return responses()

    def restore_blocks(self, index: Iterable[bytes],
                       blocks: Iterable[tuple[str, int, Iterable[bytes] | buffer_pb2.BlockGrant]],
                       timeout: float | None = TRANSFER_TIMEOUT_S, generation: int = 0):
        """Replace (or create) this buffer from a block index and its blocks; returns its new stats.

        The service writes each block into the new storage as it arrives and
        checks every block's sha256; anything missing, extra, out of order or
        corrupt is DATA_LOSS, and the buffer stays as it was.

        Args:
            index: the index's consecutive chunks.
            blocks: (sha256, size, chunks) of every block the index references, in its order; instead
                of chunks, a BlockGrant (a presigned GET) makes the service download the block itself.
            generation: as restore()'s.
        """

        def requests() -> Iterator[buffer_pb2.RestoreRequest]:
            yield buffer_pb2.RestoreRequest(buffer=self.buffer, generation=generation)
            for chunk in index:
                yield buffer_pb2.RestoreRequest(chunk=chunk)
            for sha256, size, chunks in blocks:
                ref = buffer_pb2.BlockRef(sha256=sha256, size=size)
                if isinstance(chunks, buffer_pb2.BlockGrant):
                    yield buffer_pb2.RestoreRequest(block=ref, fetch=chunks)
                    continue
                yield buffer_pb2.RestoreRequest(block=ref)
                for chunk in chunks:
                    yield buffer_pb2.RestoreRequest(chunk=chunk)

        return self._call(self._stub.Restore, requests(), timeout=timeout).stats

    def restore(self, src: str | os.PathLike | IO[bytes] | bytes | Iterable[bytes],
                timeout: float = TRANSFER_TIMEOUT_S,
                rate_limiter: Mapping[str, float | int | str | bool] | None = None, generation: int = 0):
        """Replace (or create) this buffer from a snapshot; returns its new stats.

        Args:
            src: a file path, a binary file, the snapshot's bytes, or an
                iterable of its consecutive chunks. If the iterable raises,
                the call is cancelled and the buffer stays as it was.
            rate_limiter: new rate limiter settings (as set_rate_limiter's); the counts then start
                again from the transitions restored. None keeps the snapshot's limiter and counts.
            generation: the run generation the restore starts (a resume's): from then on the buffer
                refuses writes stamped older.
        """
        first = buffer_pb2.RestoreRequest(buffer=self.buffer, generation=generation)
        if rate_limiter is not None:
            first.rate_limiter.settings.CopyFrom(buffer_pb2.BufferSettings(**rate_limiter))

        def chunks_of(f: IO[bytes]) -> Iterator[bytes]:
            while chunk := f.read(SNAPSHOT_CHUNK_BYTES):
                yield chunk

        def requests(chunks: Iterable[bytes]) -> Iterator[buffer_pb2.RestoreRequest]:
            yield first
            for chunk in chunks:
                yield buffer_pb2.RestoreRequest(chunk=chunk)

        if isinstance(src, bytes):
            src = io.BytesIO(src)
        if isinstance(src, (str, os.PathLike)):
            with open(src, "rb") as f:
                return self._call(self._stub.Restore, requests(chunks_of(f)), timeout=timeout).stats
        chunks = chunks_of(src) if hasattr(src, "read") else src
        return self._call(self._stub.Restore, requests(chunks), timeout=timeout).stats

    # -- lifecycle -----------------------------------------------------------

    def _check_size(self, size: int, field: str) -> None:
        if size > self.max_message_bytes:
            raise ResourceExhausted(
                f"{field}: encodes to {size / 2**20:.1f} MiB, over the {self.max_message_bytes / 2**20:.0f} MiB "
                "message limit; split it, or raise max_message_mb on the service and client"
            )

