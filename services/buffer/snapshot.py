"""The buffer snapshot blob: a self-checking binary format, read as a bounded stream.

Layout (all integers little-endian):

    b"RWNDBUF1" | u64 header length | header (UTF-8 JSON) | tensor bytes ... | sha256

The header describes the buffer (settings, schema, counters, writer state) and
lists each tensor's key, dtype, shape and byte count in the order they follow.
The last 32 bytes are the SHA-256 of everything before them, so a truncated or
corrupted snapshot is refused as DATA_LOSS instead of restoring wrong data. No
pickle is involved: restoring a snapshot never executes code from it.

`SnapshotReader` takes a snapshot chunk by chunk, as a Restore stream brings
it, and never holds more than a snapshot within the service's budget can be:
the header's length is checked against `header_cap` before it is read, the
header is checked (by the caller) before any tensor byte is accepted, and from
then on exactly the bytes the header declares are accepted, into one buffer
allocated up front. The hash is computed as the chunks arrive.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from rewind.codec import TORCH_TO_WIRE, dtype_name, view_bytes
from rewind.errors import DataLoss, FailedPrecondition, InvalidArgument, ResourceExhausted
from rewind_buffer import origins

MAGIC = b"RWNDBUF1"
FORMAT_VERSION = 1        # a whole snapshot: the header, then every used row of every column
INDEX_FORMAT_VERSION = 2  # a block index: the header plus which blocks hold the rows (rewind_buffer.blocks)
FORMAT_VERSIONS = (FORMAT_VERSION, INDEX_FORMAT_VERSION)
DIGEST_BYTES = 32
_PREFIX = struct.Struct("<8sQ")
DTYPES = {dtype_name(dtype): dtype for dtype in TORCH_TO_WIRE}

# The restore caps, derived from the service's budget (see restore_caps()):
# - the header's fixed part (name, settings, schema, counters, the tensor list)
#   is about 1 KB; 64 KiB leaves room for any of it;
# - the writer's episode list takes at most 48 JSON bytes per stored episode
#   ("[id,first,length]," with a 19-digit id and two 12-digit numbers), and an
#   episode has at least horizon + 1 >= 2 transitions: 24 bytes per transition;
# - the episodes' origins (rewind_buffer.origins) take at most 34 more bytes per
#   transition, and their writer table at most MAX_WRITERS x WRITER_JSON_BYTES;
# - the tensors of a buffer take at most its storage (rows <= buffer_size), plus
#   the sampler's generator state (5,056 bytes on the CPU, 16 on CUDA).
HEADER_BASE_BYTES = 64 * 1024
HEADER_BYTES_PER_TRANSITION = 24
TENSOR_MARGIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class TensorSpec:
    """One entry of the header's tensor list."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int


def restore_caps(max_transitions: int, max_storage_bytes: int) -> tuple[int, int | None]:
    """The most header bytes, and stream bytes, a snapshot of a buffer within the budget can have.

    Args:
        max_transitions: the service's transitions budget (a buffer's buffer_size is at most this).
        max_storage_bytes: the service's storage budget; 0 when allocation alone limits it.

    Returns:
        (header cap, stream cap); the stream cap is None without a storage budget, where the
        header, checked against max_transitions, bounds the tensors instead.
    """
    header_cap = (HEADER_BASE_BYTES + origins.MAX_WRITERS * origins.WRITER_JSON_BYTES
                  + (HEADER_BYTES_PER_TRANSITION + origins.ORIGIN_BYTES_PER_TRANSITION) * max_transitions)
    if not max_storage_bytes:
        return header_cap, None
    return header_cap, _PREFIX.size + header_cap + max_storage_bytes + TENSOR_MARGIN_BYTES + DIGEST_BYTES


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A CPU tensor's bytes, without a copy when it is contiguous."""
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


class ChunkedTensor(Protocol):
    """A tensor that arrives in row chunks (rewind_buffer.captures.CapturedColumn): its bytes are read as it streams."""

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def shape(self) -> tuple[int, ...]: ...

    def chunks(self) -> Iterator[torch.Tensor]:
        """Consecutive CPU tensors of whole rows, `shape[0]` rows in all."""

    def close(self) -> None:
        """Called once the stream ends or is abandoned."""


def encode(header: dict, tensors: dict[str, torch.Tensor | ChunkedTensor],
           format_version: int = FORMAT_VERSION) -> tuple[int, Iterator[memoryview | bytes]]:
    """Lay out a snapshot without copying the tensors.

    Args:
        header: JSON-serialisable description of the buffer.
        format_version: FORMAT_VERSION, or INDEX_FORMAT_VERSION for a block index.
        tensors: CPU tensors to append, in order, or ChunkedTensors read chunk by chunk as the blob streams
            (the bytes are the same either way); each ChunkedTensor is closed when the stream ends or is dropped.

    Returns:
        (total size in bytes, iterator over the blob's pieces).
    """
    header = {
        **header,
        "format_version": format_version,
        "tensors": [
            {"key": k, "dtype": dtype_name(t.dtype), "shape": list(t.shape),
             "nbytes": math.prod(t.shape) * t.dtype.itemsize}
            for k, t in tensors.items()
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(MAGIC, len(head)) + head
    total = len(prefix) + sum(e["nbytes"] for e in header["tensors"]) + DIGEST_BYTES

    def pieces() -> Iterator[memoryview | bytes]:
        try:
            digest = hashlib.sha256(prefix)
            yield prefix
            for t in tensors.values():
                for part in ((t,) if isinstance(t, torch.Tensor) else t.chunks()):
                    view = tensor_bytes(part)
                    digest.update(view)
                    yield view
            yield digest.digest()
        finally:
            for t in tensors.values():
                if not isinstance(t, torch.Tensor):
                    t.close()

    return total, pieces()


def chunked(pieces: Iterator[memoryview | bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Re-cut a stream of pieces into chunks of exactly chunk_bytes (last may be short)."""
    pending = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        while len(pending) + len(view) >= chunk_bytes:
            take = chunk_bytes - len(pending)
            pending += view[:take]
            yield bytes(pending)
            pending.clear()
            view = view[take:]
        pending += view
    if pending:
        yield bytes(pending)


def decode(blob: bytearray | bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    """Check and parse a whole snapshot (the header's meaning is not checked here).

    Raises:
        InvalidArgument: the bytes are not a Rewind buffer snapshot at all.
        DataLoss: the checksum fails, or the layout is inconsistent.
    """
    reader = SnapshotReader(header_cap=len(blob))
    reader.feed(blob)
    return reader.finish()


def tensor_specs(value: object) -> list[TensorSpec]:
    """The header's tensor list, checked: known dtypes, shapes of whole numbers, nbytes that match, unique keys.

    Raises:
        DataLoss: naming the entry at fault.
    """
    if not isinstance(value, list):
        raise DataLoss(f"snapshot.tensors: a list is expected, found {type(value).__name__}")
    specs: list[TensorSpec] = []
    for i, entry in enumerate(value):
        where = f"snapshot.tensors[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"key", "dtype", "shape", "nbytes"}:
            raise DataLoss(f"{where}: an object with key, dtype, shape and nbytes is expected, found {entry!r:.200}")
        key, dtype, shape, nbytes = entry["key"], dtype_of(entry["dtype"]), entry["shape"], entry["nbytes"]
        if not isinstance(key, str) or any(spec.key == key for spec in specs):
            raise DataLoss(f"{where}.key: {key!r:.100} is not a string, or appears twice")
        if dtype is None:
            raise DataLoss(f"{where}.dtype: {entry['dtype']!r:.100} is not a supported dtype")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise DataLoss(f"{where}.shape: {shape!r:.100} is not a list of non-negative integers")
        if not _is_count(nbytes) or nbytes != math.prod(shape) * dtype.itemsize:
            raise DataLoss(f"{where}.nbytes: {nbytes!r:.100} does not match shape {shape} of {entry['dtype']}")
        specs.append(TensorSpec(key, dtype, tuple(shape), nbytes))
    return specs


def dtype_of(name: object) -> torch.dtype | None:
    """The supported dtype called `name` ("float32"), or None (for any other JSON value too)."""
    return DTYPES.get(name) if isinstance(name, str) else None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class SnapshotReader:
    """Reads one snapshot from consecutive chunks, within caps, hashing as it goes.

    feed() each chunk, then finish(); close() drops every byte held (call it
    whatever happened, so a refused stream leaves nothing behind).
    """

    def __init__(self, *, header_cap: int, stream_cap: int | None = None,
                 check_header: Callable[[dict], Any] | None = None) -> None:
        """A reader for one stream.

        Args:
            header_cap: the most header bytes accepted.
            stream_cap: the most bytes accepted in all (None: what the checked header declares).
            check_header: called with the parsed header before any tensor byte is accepted;
                it raises to refuse the snapshot, and what it returns is kept as `checked`.
        """
        self.header_cap, self.stream_cap, self.check_header = header_cap, stream_cap, check_header
        self.received = 0
        self.checked: Any = None
        self._head = bytearray()
        self._head_len: int | None = None
        self._header: dict | None = None
        self._specs: list[TensorSpec] = []
        self._declared = 0
        self._body: torch.Tensor | None = None
        self._view: memoryview | None = None
        self._filled = 0
        self._digest = hashlib.sha256()
        self._tail = b""  # the last 32 bytes seen: the digest, once the stream ends

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Take the next chunk.

        Raises:
            InvalidArgument: not a snapshot (bad magic bytes).
            ResourceExhausted: the snapshot is larger than the caps allow.
            DataLoss: the header is malformed, or the stream runs past what it declares.
        """
        data = memoryview(chunk).cast("B")
        self.received += len(data)
        if self.stream_cap is not None and self.received > self.stream_cap:
            raise ResourceExhausted(f"chunk: the stream passed {self.stream_cap:,} bytes, the most a snapshot "
                                    "within this service's budget can be (max_transitions, max_storage_mb)")
        self._hash(data)
        if self._header is None:
            data = self._feed_head(data)
        if len(data):
            self._feed_body(data)

    def finish(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """The header and the tensors (views of the reader's buffer), once the whole stream is in.

        Raises:
            InvalidArgument: too short to be a snapshot.
            DataLoss: the checksum fails, or the stream is not the size its header declares.
        """
        if self._head_len is None or self.received < _PREFIX.size + DIGEST_BYTES:
            raise InvalidArgument(f"chunk: the data is not a Rewind buffer snapshot (only {self.received} bytes)")
        if self._digest.digest() != self._tail:
            raise DataLoss(f"snapshot: sha256 mismatch over {self.received} bytes; the snapshot is truncated or "
                           "corrupted")
        if self._header is None or self.received != self._declared:
            raise DataLoss(f"snapshot: the stream ended after {self.received:,} bytes, short of what its header "
                           "declares")
        tensors: dict[str, torch.Tensor] = {}
        offset = 0
        for spec in self._specs:
            tensors[spec.key] = view_bytes(self._view[offset : offset + spec.nbytes], spec.dtype, spec.shape, spec.key)
            offset += spec.nbytes
        return self._header, tensors

    def close(self) -> None:
        """Drop every byte held (tensors returned by finish() keep theirs alive until they go too)."""
        self._head = bytearray()
        self._body = self._view = None
        self._header, self._specs, self.checked = None, [], None

    def _hash(self, data: memoryview) -> None:
        # Everything but the last 32 bytes seen so far is hashed: those may be the digest.
        if len(data) >= DIGEST_BYTES:
            self._digest.update(self._tail)
            self._digest.update(data[:-DIGEST_BYTES])
            self._tail = bytes(data[-DIGEST_BYTES:])
        else:
            joined = self._tail + bytes(data)
            self._digest.update(joined[:-DIGEST_BYTES])
            self._tail = joined[-DIGEST_BYTES:]

    def _feed_head(self, data: memoryview) -> memoryview:
        """Take prefix and header bytes; returns what is left of `data` (tensor bytes)."""
        if self._head_len is None:
            take = _PREFIX.size - len(self._head)
            self._head += data[:take]
            data = data[take:]
            if not MAGIC.startswith(bytes(self._head[: len(MAGIC)])):
                raise InvalidArgument("chunk: the data is not a Rewind buffer snapshot (bad magic bytes)")
            if len(self._head) < _PREFIX.size:
                return data
            _, self._head_len = _PREFIX.unpack_from(self._head)
            if self._head_len > self.header_cap:
                raise ResourceExhausted(f"chunk: the snapshot's header declares {self._head_len:,} bytes, over the "
                                        f"cap of {self.header_cap:,} for this service's budget (max_transitions)")
        take = _PREFIX.size + self._head_len - len(self._head)
        self._head += data[:take]
        data = data[take:]
        if len(self._head) == _PREFIX.size + self._head_len:
            self._start_body()
        return data

    def _start_body(self) -> None:
        """Parse and check the header, then allocate exactly the bytes it declares."""
        try:
            header = json.loads(bytes(self._head[_PREFIX.size :]))
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
            raise DataLoss(f"snapshot: header is not valid JSON ({type(exc).__name__}: {exc})"[:300]) from None
        self._head = bytearray()
        if not isinstance(header, dict):
            raise DataLoss(f"snapshot: the header is a JSON {type(header).__name__}, not an object")
        found = header.get("format_version")
        if isinstance(found, int) and not isinstance(found, bool) and found > max(FORMAT_VERSIONS):
            # Intact data this release cannot read: an upgrade fixes it, so it is not a loss.
            raise FailedPrecondition(f"snapshot: format_version {found} was written by a newer Rewind; this buffer "
                                     f"service reads format_version {max(FORMAT_VERSIONS)}; upgrade it to restore "
                                     "this")
        if found not in FORMAT_VERSIONS or isinstance(found, bool):
            raise DataLoss(f"snapshot: format_version {found!r:.50} is not supported")
        specs = tensor_specs(header.get("tensors"))
        if self.check_header is not None:
            self.checked = self.check_header(header)
        tensor_bytes = sum(spec.nbytes for spec in specs)
        self._declared = _PREFIX.size + self._head_len + tensor_bytes + DIGEST_BYTES
        if self.stream_cap is not None and self._declared > self.stream_cap:
            raise ResourceExhausted(f"chunk: the snapshot declares {self._declared:,} bytes, over the cap of "
                                    f"{self.stream_cap:,} for this service's budget (max_storage_mb)")
        try:
            # torch.empty touches no page until written: a refused stream costs only what arrived.
            self._body = torch.empty(tensor_bytes + DIGEST_BYTES, dtype=torch.uint8)
        except (RuntimeError, MemoryError) as exc:
            raise ResourceExhausted(f"chunk: {tensor_bytes:,} bytes for the snapshot's tensors cannot be allocated "
                                    f"({type(exc).__name__})") from None
        self._view = memoryview(self._body.numpy())
        self._header, self._specs = header, specs

    def _feed_body(self, data: memoryview) -> None:
        end = self._filled + len(data)
        if end > len(self._view):
            raise DataLoss(f"snapshot: the stream runs past the {self._declared:,} bytes its header declares")
        self._view[self._filled : end] = data
        self._filled = end
