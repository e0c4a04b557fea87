"""BufferServicer: gRPC glue between rewind.buffer.v1 and the BufferRegistry."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict

import grpc

from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.buffer_messages import decode_episode, encode_batch
from rewind.endpoints import LOOPBACK
from rewind.errors import DataLoss, Internal, InvalidArgument, ResourceExhausted, RewindError
from rewind.versions import SNAPSHOT_FORMATS, current
from rewind_buffer import block_stream, snapshot, snapshot_check
from rewind_buffer.block_upload import BlockFetcher, GrantedUploads
from rewind_buffer.blocks import DEFAULT_BLOCK_BYTES, DIGEST, BlockLoader, BlockMap, columns_of, row_bytes
from rewind_buffer.buffer_state import BufferState
from rewind_buffer.captures import Capture, CaptureStore
from rewind_buffer.episode_buffer import EpisodeBuffer, storage_bytes_for
from rewind_buffer.origins import Origin
from rewind_buffer.rate_limiter import LimiterStats, Wait
from rewind_buffer.registry import BufferRegistry
from rewind_buffer.settings import BufferSettings, check_buffer_name
from rewind_buffer.writer import TRAJ_KEY

log = logging.getLogger(__name__)

MAX_PREFETCH = 64
DEFAULT_PREFETCH = 2
DEFAULT_CHUNK_BYTES = 1024 * 1024
# A refused restore that had received this much gives the freed memory back to the OS.
TRIM_AFTER_BYTES = 1024 * 1024
_END = object()
# A rate limiter wait ends this much before the call's deadline (the larger of the two).
DEADLINE_MARGIN_S, DEADLINE_MARGIN_SHARE = 0.05, 0.1
# BufferSettings fields whose absence (not their zero) means "the default".
OPTIONAL_SETTINGS = ("min_history", "max_episode_length", "samples_per_insert", "min_size_to_sample", "error_buffer",
                     "inserts_wait")
LIMITER_SETTINGS = ("samples_per_insert", "min_size_to_sample", "error_buffer", "inserts_wait")


def stats_to_proto(buffer: EpisodeBuffer, out: buffer_pb2.BufferStats) -> None:
    stats = buffer.stats()
    out.name = stats.name
    out.settings.CopyFrom(buffer_pb2.BufferSettings(**asdict(stats.settings)))
    for key in ("transitions", "episodes", "ready", "device", "bytes", "episodes_added", "episodes_evicted",
                "batches_sampled", "sampleable_starts", "sampleable_episodes", "generation"):
        setattr(out, key, getattr(stats, key))
    if stats.schema is not None:
        stats.schema.to_proto(out.schema)
    if stats.limiter is not None:
        _limiter_to_proto(stats.limiter, out.rate_limiter)
    for writer in stats.writers:
        out.writers.add(**asdict(writer))


def _limiter_to_proto(stats: LimiterStats, out: buffer_pb2.RateLimiterStats) -> None:
    out.MergeFrom(buffer_pb2.RateLimiterStats(**{
        **{k: v for k, v in asdict(stats).items() if k != "settings"},
        **{k: v for k, v in asdict(stats.settings).items()}}))


class BufferServicer(buffer_pb2_grpc.BufferServiceServicer):
    """Implements rewind.buffer.v1.BufferService over a BufferRegistry.

    Args:
        registry: the buffers.
        captures: captures waiting to be streamed.
        block_bytes: the most bytes of a new block (snapshot_block_mb).
        store_endpoints: the stores UploadBlocks may PUT blocks to (host:port patterns).
        store_timeout_s: socket timeout of each such PUT.
    """

    def __init__(self, registry: BufferRegistry, captures: CaptureStore | None = None,
                 block_bytes: int = DEFAULT_BLOCK_BYTES, store_endpoints: tuple[str, ...] = LOOPBACK,
                 store_timeout_s: float = 60.0, limiter_max_wait_s: float = 60.0,
                 limiter_max_waiting: int = 4) -> None:
        self.registry = registry
        self.store_endpoints = tuple(store_endpoints)  # where UploadBlocks may PUT (rewind.endpoints)
        self.store_timeout_s = store_timeout_s
        # `is None`, not `or`: an empty store is falsy (len 0), and `or` dropped the configured one.
        self.captures = captures if captures is not None else CaptureStore()
        self.block_bytes = block_bytes  # the most bytes of a new block (snapshot_block_mb)
        self.limiter_max_wait_s = limiter_max_wait_s
        # Unary calls waiting on a limiter hold a gRPC worker each: bounded, so health and others still get one.
        self._wait_slots = threading.BoundedSemaphore(limiter_max_waiting)

    def _wait(self, context: grpc.ServicerContext) -> Wait:
        """How long a unary call may wait for a rate limiter: at most limiter_max_wait_s, and ending a little
        before its deadline, so that the answer (with the limiter's state) reaches the caller before its own
        deadline fires and drops it."""
        remaining = context.time_remaining()
        if remaining is None:
            return Wait(self.limiter_max_wait_s, context.is_active, self._wait_slots)
        before_deadline = remaining - max(DEADLINE_MARGIN_S, DEADLINE_MARGIN_SHARE * remaining)
        return Wait(min(max(before_deadline, 0.0), self.limiter_max_wait_s), context.is_active, self._wait_slots)

    def ListBuffers(self, request, context):
        # The newest snapshot format it restores: a resume checks a checkpoint's buffers against it.
        response = buffer_pb2.ListBuffersResponse(versions={**current(), "snapshot_format": str(max(SNAPSHOT_FORMATS))})
        for buffer in self.registry.buffers():  # one list: a buffer deleted meanwhile is no NOT_FOUND
            stats_to_proto(buffer, response.buffers.add())
        return response

    def CreateBuffer(self, request, context):
        response = buffer_pb2.CreateBufferResponse()
        stats_to_proto(self.registry.create(request.buffer, self._settings(request.settings)), response.stats)
        return response

    def ResetBuffer(self, request, context):
        buffer, dropped = self.registry.reset(check_buffer_name(request.buffer), self._settings(request.settings))
        response = buffer_pb2.ResetBufferResponse(episodes_dropped=dropped)
        stats_to_proto(buffer, response.stats)
        return response

    def DeleteBuffer(self, request, context):
        return buffer_pb2.DeleteBufferResponse(episodes_dropped=self.registry.delete(request.buffer))

    def _settings(self, s: buffer_pb2.BufferSettings, base: BufferSettings | None = None) -> BufferSettings:
        """A request's settings over `base` (default: the service's defaults); unset, or zero where zero is
        invalid, keeps the base's."""
        return (base or self.registry.defaults).replace(
            buffer_size=s.buffer_size or None, batch_size=s.batch_size or None, horizon=s.horizon or None,
            **_given(s, OPTIONAL_SETTINGS))

    def SetRateLimiter(self, request, context):
        buffer = self.registry.get(request.buffer)
        _change_limiter(buffer, request.change, self._limiter_settings, "change")
        response = buffer_pb2.SetRateLimiterResponse()
        stats_to_proto(buffer, response.stats)
        return response

    def _limiter_settings(self, s: buffer_pb2.BufferSettings, base: BufferSettings) -> BufferSettings:
        """The limiter fields of `s` over `base` (the buffer's own settings); the others are not read."""
        return base.replace(**_given(s, LIMITER_SETTINGS))

    def GetStats(self, request, context):
        response = buffer_pb2.GetStatsResponse()
        stats_to_proto(self.registry.get(request.buffer), response.stats)
        return response

    def AddEpisode(self, request, context):
        buffer = self.registry.get(request.buffer)
        if request.HasField("routing"):
            _check_routing(request.routing, "routing")
        origin = _origin(request.routing, _policy_version(request.policy_version, "policy_version"))
        episode = decode_episode(request.episode, "episode")
        with buffer.lock:  # the id must be this add's, not a concurrent one's
            num = buffer.add(episode, self._wait(context), _generation(request.generation), origin)
            return buffer_pb2.AddEpisodeResponse(num_episodes=num, episode_id=buffer.episodes_added - 1)

    def LoadEpisodes(self, request_iterator, context):
        buffer, episodes, origins, first, transitions, generation = None, [], [], None, 0, 0
        for request in request_iterator:
            if first is None:
                first = request
                buffer = self.registry.get(request.buffer)
                generation = _generation(request.generation)
                buffer.check_generation(generation)  # before the episodes arrive: an old writer learns it at once
            elif request.buffer and request.buffer != buffer.name:
                raise InvalidArgument(
                    f"buffer: message names {request.buffer!r} but the stream started with {buffer.name!r}"
                )
            if request.routing and len(request.routing) != len(request.episodes):
                raise InvalidArgument(f"routing: {len(request.routing)} keys for the message's "
                                      f"{len(request.episodes)} episodes; give one per episode, or none")
            for i, key in enumerate(request.routing):
                _check_routing(key, f"routing[{i}]")
            origins += _origins(request)
            for msg in request.episodes:
                episode = decode_episode(msg, f"episodes[{len(episodes)}]")
                obs = episode.get("obs")
                transitions += obs.shape[0] if obs is not None and obs.dim() else 0
                if transitions > buffer.capacity:
                    # Bounds the memory a load holds before it commits; more would only evict itself.
                    raise ResourceExhausted(
                        f"episodes: more than {buffer.capacity:,} transitions (buffer_size) in one load; "
                        "load fewer episodes at a time"
                    )
                episodes.append(episode)
        if not episodes:
            raise InvalidArgument("episodes: the stream carried no episodes")
        num = buffer.load(episodes, self._wait(context), generation, origins)
        return buffer_pb2.LoadEpisodesResponse(num_episodes=num, episodes_loaded=len(episodes))

    def Sample(self, request, context):
        buffer = self.registry.get(request.buffer)
        sequences = _sequences(request.sequences, "sequences") if request.HasField("sequences") else None
        response = buffer_pb2.SampleResponse()
        _encode(buffer.sample(self._wait(context), sequences), response.batch)
        return response

    def SampleSequences(self, request_iterator, context):
        buffer = None
        for index, request in enumerate(_until_gone(request_iterator)):
            if buffer is None:
                buffer = self.registry.get(request.buffer)
            elif request.buffer and request.buffer != buffer.name:
                raise InvalidArgument(f"buffer: message {index} names {request.buffer!r} but the stream "
                                      f"started with {buffer.name!r}")
            sequences = _sequences(request.sequences, f"sequences (message {index})")
            # A stream carries no deadline to go by: a limiter's wait is bounded by limiter_max_wait_s.
            wait = Wait(self.limiter_max_wait_s, context.is_active)
            response = buffer_pb2.SampleSequencesResponse()
            _encode(buffer.sample(wait, sequences), response.batch)
            yield response

    def SampleStream(self, request, context):
        buffer = self.registry.get(request.buffer)
        prefetch = request.prefetch or DEFAULT_PREFETCH
        if not 1 <= prefetch <= MAX_PREFETCH:
            raise InvalidArgument(f"prefetch: {request.prefetch} is outside 1..{MAX_PREFETCH}")
        if request.num_batches < 0:
            raise InvalidArgument(f"num_batches: {request.num_batches} is negative (0 streams until cancelled)")
        buffer.require_ready()  # up front, not mid-stream: the client sees the reason at once
        yield from _stream_batches(buffer, prefetch, request.num_batches, context, self.limiter_max_wait_s)

    def Snapshot(self, request, context):
        buffer = self.registry.get(request.buffer)
        chunk_bytes = _chunk_bytes(request.chunk_bytes)
        state = self._state(buffer, request)
        total, pieces = snapshot.encode(state.header(), state.tensors)
        offset = 0
        versions = {**current(), "snapshot_format": str(snapshot.FORMAT_VERSION)}  # on the first message only
        for chunk in snapshot.chunked(pieces, chunk_bytes):
            if not context.is_active():
                return
            yield buffer_pb2.SnapshotResponse(chunk=chunk, offset=offset, total_bytes=total,
                                              episodes_added=state.episodes_added, versions=versions)
            offset += len(chunk)
            versions = None

    def SnapshotBlocks(self, request, context):
        buffer = self.registry.get(request.buffer)
        chunk_bytes = _chunk_bytes(request.chunk_bytes)
        _check_stored_blocks(request.stored_blocks, "stored_blocks")
        state = self._state(buffer, request)
        versions = _index_versions()
        for event in block_stream.stream_blocks(state, set(request.stored_blocks), chunk_bytes):
            if not context.is_active():
                return
            if isinstance(event, block_stream.BlockStart):
                yield buffer_pb2.SnapshotBlocksResponse(block=buffer_pb2.BlockRef(sha256=event.sha256,
                                                                                  size=event.size))
            elif isinstance(event, block_stream.IndexStart):
                yield buffer_pb2.SnapshotBlocksResponse(index=_index_start(event, versions))
            else:
                yield buffer_pb2.SnapshotBlocksResponse(chunk=event)

    def UploadBlocks(self, request_iterator, context):
        requests = iter(request_iterator)
        first = next(requests, None)
        if first is None or first.WhichOneof("item") != "start":
            raise InvalidArgument("start: the first UploadBlocksRequest must carry the SnapshotBlocksRequest")
        request = first.start
        buffer = self.registry.get(request.buffer)
        chunk_bytes = _chunk_bytes(request.chunk_bytes)
        _check_stored_blocks(request.stored_blocks, "start.stored_blocks")
        state = self._state(buffer, request)
        sink = GrantedUploads(requests, self.store_endpoints, self.store_timeout_s)
        versions = _index_versions()
        for event in block_stream.stream_blocks(state, set(request.stored_blocks), chunk_bytes, sink):
            if not context.is_active():
                return
            if isinstance(event, block_stream.BlocksNeeded):
                refs = [buffer_pb2.BlockRef(sha256=b.sha256, size=b.size) for b in event.blocks]
                yield buffer_pb2.UploadBlocksResponse(needed=buffer_pb2.BlocksNeeded(blocks=refs))
            elif isinstance(event, block_stream.BlockUploaded):
                yield buffer_pb2.UploadBlocksResponse(uploaded=buffer_pb2.BlockRef(sha256=event.sha256,
                                                                                   size=event.size))
            elif isinstance(event, block_stream.IndexStart):
                yield buffer_pb2.UploadBlocksResponse(index=_index_start(event, versions))
            else:
                yield buffer_pb2.UploadBlocksResponse(chunk=event)

    def _state(self, buffer: EpisodeBuffer, request) -> BufferState:
        """The state a Snapshot or SnapshotBlocks request streams: its capture, or the buffer as of now."""
        if request.capture_id:
            if request.expect_episodes_added:
                raise InvalidArgument("expect_episodes_added: give it to Capture, not with a capture_id")
            return self.captures.take(request.capture_id, buffer.name).state
        return buffer.export_state(request.expect_episodes_added, block_bytes=self.block_bytes)

    def Capture(self, request, context):
        buffer = self.registry.get(request.buffer)
        state = buffer.export_state(request.expect_episodes_added, block_bytes=self.block_bytes)
        capture_id = self.captures.put(Capture(buffer.name, state))
        response = buffer_pb2.CaptureResponse(capture_id=capture_id, episodes_added=state.episodes_added,
                                              batches_sampled=state.batches_sampled, transitions=state.transitions,
                                              generation=state.generation)
        if state.limiter is not None:
            limiter = state.limiter
            response.rate_limiter.MergeFrom(buffer_pb2.RateLimiterStats(
                **asdict(limiter.settings), inserts=limiter.inserts, samples=limiter.samples, paused=limiter.paused))
        return response

    def Restore(self, request_iterator, context):
        header_cap, stream_cap = snapshot.restore_caps(self.registry.limits.max_transitions,
                                                       self.registry.limits.max_storage_bytes)
        reader = snapshot.SnapshotReader(header_cap=header_cap, stream_cap=stream_cap)
        requests = iter(request_iterator)
        restored = None
        try:
            name, first_block, change, generation = _receive_snapshot(requests, reader, self._admit_snapshot)
            _, tensors = reader.finish()
            if isinstance(reader.checked, snapshot_check.BlockIndex):
                index = reader.checked
                state = dataclasses.replace(index.state, tensors=tensors)
                reader.close()  # the index is read; from here on the blocks go straight into the storage
                restored = _restore_blocks(name, index, state, first_block, requests, self.registry,
                                           BlockFetcher(self.store_endpoints, self.store_timeout_s))
            else:
                if first_block is not None:
                    raise InvalidArgument("block: a whole snapshot (format_version 1) is not followed by blocks")
                state = dataclasses.replace(reader.checked, tensors=tensors)
                snapshot_check.check_tensors(state)
                restored = _rebuild(name, state, self.registry)
            if change is not None:
                _change_limiter(restored, change, self._limiter_settings, "rate_limiter")
            restored.fence(generation)
            self.registry.put(restored)  # only now: a failed restore leaves the old buffer as it was
        except BaseException:
            reader.close()  # first: only unreferenced bytes can be given back
            restored = None
            if reader.received >= TRIM_AFTER_BYTES:
                _give_memory_back()
            raise
        finally:
            reader.close()
        response = buffer_pb2.RestoreResponse()
        stats_to_proto(restored, response.stats)
        return response

    def _admit_snapshot(self, name: str, header: dict) -> BufferState | snapshot_check.BlockIndex:
        """Check a snapshot's (or block index's) header in full and against the budget, before anything else."""
        if header.get("format_version") == snapshot.INDEX_FORMAT_VERSION:
            checked = snapshot_check.parse_index(header)
            state = checked.state
        else:
            checked = state = snapshot_check.parse_header(header)
        storage = storage_bytes_for(state.schema, state.settings.buffer_size) if state.schema is not None else 0
        self.registry.admit(name, state.settings, storage)
        return checked


def _chunk_bytes(requested: int) -> int:
    chunk_bytes = requested or DEFAULT_CHUNK_BYTES
    if not 1024 <= chunk_bytes <= 16 * 1024 * 1024:
        raise InvalidArgument(f"chunk_bytes: {requested} is outside 1 KiB..16 MiB")
    return chunk_bytes


def _receive_snapshot(requests: Iterator[buffer_pb2.RestoreRequest], reader: snapshot.SnapshotReader,
                      admit: Callable[[str, dict], object]
                      ) -> tuple[str, buffer_pb2.RestoreRequest | None, buffer_pb2.RateLimiterChange | None, int]:
    """Feed a Restore stream to `reader` up to its first block, if any.

    Returns:
        The buffer's name, the message that opens the first block (or None), and the rate limiter change
        and generation (from the first message).
    """
    name, change, generation = None, None, 0
    for request in requests:
        if name is None:
            name = check_buffer_name(request.buffer)
            reader.check_header = functools.partial(admit, name)
            change = request.rate_limiter if request.HasField("rate_limiter") else None
            generation = _generation(request.generation)
        else:
            _check_same_buffer(request, name)
            if request.HasField("rate_limiter"):
                raise InvalidArgument("rate_limiter: only the first message of a Restore may carry it")
        if request.HasField("block"):
            return name, request, change, generation
        reader.feed(request.chunk)
    if name is None:
        raise InvalidArgument("request: the stream carried no messages")
    return name, None, change, generation


def _restore_blocks(name: str, index: snapshot_check.BlockIndex, state: BufferState,
                    first: buffer_pb2.RestoreRequest | None, requests: Iterator[buffer_pb2.RestoreRequest],
                    registry: BufferRegistry, fetcher: BlockFetcher) -> EpisodeBuffer:
    """A buffer rebuilt from a block index and its blocks, each written into the storage as it arrives.

    The service holds the storage, one chunk and the index: never the whole snapshot.

    Raises:
        DataLoss: a block is missing, extra, out of order, short, or not the bytes its name says;
            or the rows disagree with the writer's layout.
    """
    buffer = EpisodeBuffer.restore_begin(name, state, storage_device=registry.storage_device,
                                         reserve_storage=registry.reserve_storage)
    if state.schema is None:
        if first is not None:
            raise DataLoss("block: the index of an empty buffer references no blocks")
        return buffer
    columns, storage = columns_of(state.schema), buffer.storage_columns()
    places: dict[int, list[tuple[int, int, int]]] = {}
    for start, end, number, offset in index.extents:
        places.setdefault(number, []).append((start, end, offset))
    loader, received = None, 0
    for request in _with_first(first, requests):
        _check_same_buffer(request, name)
        if request.HasField("block"):
            if loader is not None:
                loader.finish()
            loader = _open_block(request.block, index, received, columns, storage, places)
            received += 1
            if request.HasField("fetch"):
                fetcher.fetch(request.fetch, loader, f"blocks[{received - 1}].fetch")  # and finished
                loader = None
        elif request.HasField("fetch"):
            raise InvalidArgument("fetch: comes with the block it fetches, in the same message")
        elif loader is None:
            raise DataLoss("chunk: bytes arrived for a block that was fetched from the store")
        else:
            loader.feed(request.chunk)
    if loader is not None:
        loader.finish()
    if received == 0 and index.blocks:
        raise DataLoss(f"blocks: this is a block index (snapshot format_version 2) and none of its "
                       f"{len(index.blocks)} blocks followed it; restore it with the checkpoint service's "
                       "RestoreBuffers (CheckpointClient.restore_buffers), which sends them from the run's blocks/")
    if received != len(index.blocks):
        missing = index.blocks[received][0]
        raise DataLoss(f"blocks: {received} of the index's {len(index.blocks)} blocks arrived; block "
                       f"{missing[:12]}... is missing")
    snapshot_check.check_tensors(dataclasses.replace(state, tensors={TRAJ_KEY: storage[TRAJ_KEY][:index.rows].cpu()}))
    block_map = BlockMap.from_index(row_bytes(state.schema), index.blocks, index.extents)
    buffer.restore_finish(state, index.rows, block_map)
    return buffer


def _check_same_buffer(request: buffer_pb2.RestoreRequest, name: str) -> None:
    """Later messages of a Restore stream may leave `buffer` empty, but not name another buffer."""
    if request.buffer and request.buffer != name:
        raise InvalidArgument(f"buffer: message names {request.buffer!r} but the stream started with {name!r}")


def _with_first(first: buffer_pb2.RestoreRequest | None, requests: Iterator[buffer_pb2.RestoreRequest]
                ) -> Iterator[buffer_pb2.RestoreRequest]:
    if first is not None:
        yield first
    yield from requests


def _open_block(ref: buffer_pb2.BlockRef, index: snapshot_check.BlockIndex, number: int, columns: list,
                storage: dict, places: dict[int, list[tuple[int, int, int]]]) -> BlockLoader:
    """The loader of the index's block `number`, which `ref` must name."""
    if number >= len(index.blocks):
        raise DataLoss(f"block: {ref.sha256[:12]}... arrived after all {len(index.blocks)} blocks of the index")
    sha256, rows = index.blocks[number]
    loader = BlockLoader(storage, columns, sha256, rows, places[number])
    if ref.sha256 != sha256 or ref.size != loader.size:
        raise DataLoss(f"block: {ref.sha256[:12]}... ({ref.size:,} bytes) arrived where the index's block {number} "
                       f"is {sha256[:12]}... ({loader.size:,} bytes)")
    return loader


def _rebuild(name: str, state: BufferState, registry: BufferRegistry) -> EpisodeBuffer:
    """The restored buffer (not yet installed); every check has passed, so a failure here is a bug or OOM."""
    try:
        return EpisodeBuffer.from_state(name, state, storage_device=registry.storage_device,
                                        reserve_storage=registry.reserve_storage)
    except RewindError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.error("snapshot passed its checks but did not restore", exc_info=exc)
        raise DataLoss(f"snapshot: contents are inconsistent ({type(exc).__name__}: {exc})") from None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def _give_memory_back() -> None:
    """Return a refused restore's memory to the OS, not just to the allocator.

    The snapshot's tensor bytes live in one large allocation that goes back to
    the OS when freed, but the header and the chunks arrive as many mid-sized
    allocations that glibc may keep in its arenas once freed; the trim hands
    those back too, so a refused stream does not leave the process larger.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _stream_batches(
    buffer: EpisodeBuffer, prefetch: int, num_batches: int, context: grpc.ServicerContext, max_wait_s: float
) -> Iterator[buffer_pb2.SampleStreamResponse]:
    """Sample in a producer thread, up to `prefetch` batches ahead of the sender.

    A batch the rate limiter holds back waits at most `max_wait_s` (streams carry no deadline to go by),
    in the producer thread; the stream then ends with DEADLINE_EXCEEDED.
    """
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    context.add_callback(stop.set)  # fires on cancel, deadline and completion
    wait = Wait(max_wait_s, lambda: not stop.is_set())

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            sent = 0
            while num_batches == 0 or sent < num_batches:
                response = buffer_pb2.SampleStreamResponse()
                _encode(buffer.sample(wait), response.batch)
                if not offer(response):
                    return
                sent += 1
            offer(_END)
        except RewindError as exc:
            offer(exc)
        except Exception as exc:
            log.error("sampling failed", exc_info=exc)
            offer(Internal(f"sampling failed ({type(exc).__name__}); the server log has details"))

    producer = threading.Thread(target=produce, name=f"sample-{buffer.name}", daemon=True)
    producer.start()
    try:
        while not stop.is_set():
            try:
                item = ready.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()


def _check_stored_blocks(names, field: str) -> None:
    for i, name in enumerate(names):
        if not DIGEST.fullmatch(name):
            raise InvalidArgument(f"{field}[{i}]: {name!r:.80} is not a sha256 (64 lower-case hex digits)")


def _index_versions() -> dict[str, str]:
    return {**current(), "snapshot_format": str(snapshot.INDEX_FORMAT_VERSION)}


def _index_start(event: block_stream.IndexStart, versions: dict[str, str]) -> buffer_pb2.BlockIndexStart:
    return buffer_pb2.BlockIndexStart(
        size=event.size, blocks=[buffer_pb2.BlockRef(sha256=sha, size=size) for sha, size in event.blocks],
        episodes_added=event.episodes_added, versions=versions)


def _change_limiter(buffer: EpisodeBuffer, change: buffer_pb2.RateLimiterChange,
                    settings_of: Callable[[buffer_pb2.BufferSettings, BufferSettings], BufferSettings],
                    field: str) -> None:
    """Apply a RateLimiterChange (SetRateLimiter, or a Restore's) to `buffer`."""
    try:
        settings = settings_of(change.settings, buffer.settings) if change.HasField("settings") else None
    except InvalidArgument as exc:
        raise InvalidArgument(f"{field}.settings.{exc.message}") from None
    buffer.change_limiter(settings, change.paused if change.HasField("paused") else None)


MAX_SEQUENCES = 65_536  # as batch_size's bound: a batch gathered at once


def _given(s: buffer_pb2.BufferSettings, names: tuple[str, ...]) -> dict[str, object]:
    """The fields of `s` among `names`, None where unset (Settings.replace keeps those)."""
    return {name: getattr(s, name) if s.HasField(name) else None for name in names}


def _sequences(value: int, field: str) -> int:
    if not 0 <= value <= MAX_SEQUENCES:
        raise InvalidArgument(f"{field}: {value} is outside 0..{MAX_SEQUENCES:,}")
    return value


def _encode(batch, out: buffer_pb2.Batch) -> None:
    encode_batch(batch.obs, batch.action, batch.reward, batch.done, batch.sequence_number, out)
    out.sampleable_starts, out.sampleable_episodes = batch.sampleable_starts, batch.sampleable_episodes


def _check_routing(key: buffer_pb2.RoutingKey, field: str) -> None:
    """A routing key names its writer and a non-negative episode index."""
    if not key.writer:
        raise InvalidArgument(f"{field}.writer: empty; a routing key names the writer that routed the episode")
    if len(key.writer) > 256:
        raise InvalidArgument(f"{field}.writer: {len(key.writer)} characters, more than 256")
    if key.index < 0:
        raise InvalidArgument(f"{field}.index: {key.index} is negative")


def _policy_version(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field}: {value} is negative (0: unknown, or random actions)")
    return value


def _origin(routing: buffer_pb2.RoutingKey, policy_version: int) -> Origin:
    """An episode's origin: its routing key's writer and index (an unset key's are "" and 0)."""
    return Origin(routing.writer, routing.index, policy_version)


def _origins(request: buffer_pb2.LoadEpisodesRequest) -> list[Origin]:
    """The origins of a LoadEpisodes message's episodes: none or one policy version (and routing key) each."""
    count, versions = len(request.episodes), request.policy_versions
    if versions and len(versions) != count:
        raise InvalidArgument(f"policy_versions: {len(versions)} versions for the message's {count} episodes; give "
                              "one per episode, or none")
    versions = [_policy_version(v, f"policy_versions[{i}]") for i, v in enumerate(versions)] or [0] * count
    keys = request.routing or [buffer_pb2.RoutingKey()] * count
    return [_origin(key, version) for key, version in zip(keys, versions, strict=True)]


def _until_gone(requests: Iterator) -> Iterator:
    """A client stream's requests, ending quietly when the client cancels (reading then raises RpcError)."""
    try:
        yield from requests
    except grpc.RpcError:
        return


def _generation(value: int) -> int:
    if value < 0:
        raise InvalidArgument(f"generation: {value} is negative (0: unstamped)")
    return value
