"""The buffer snapshot blob: a self-checking binary format.

Layout (all integers little-endian):

    b"RWNDBUF1" | u64 header length | header (UTF-8 JSON) | tensor bytes ... | sha256

The header describes the buffer (settings, schema, counters, writer state) and
lists each tensor's key, dtype, shape and byte count in the order they follow.
The last 32 bytes are the SHA-256 of everything before them, so a truncated or
corrupted snapshot is refused as DATA_LOSS instead of restoring wrong data. No
pickle is involved: restoring a snapshot never executes code from it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator

import torch

from rewind.codec import dtype_name, view_bytes
from rewind.errors import DataLoss, InvalidArgument

MAGIC = b"RWNDBUF1"
FORMAT_VERSION = 1
DIGEST_BYTES = 32
_PREFIX = struct.Struct("<8sQ")


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def encode(header: dict, tensors: dict[str, torch.Tensor]) -> tuple[int, Iterator[memoryview | bytes]]:
    """Lay out a snapshot without copying the tensors.

    Args:
        header: JSON-serialisable description of the buffer.
        tensors: CPU tensors to append, in order.

    Returns:
        (total size in bytes, iterator over the blob's pieces).
    """
    header = {
        **header,
        "format_version": FORMAT_VERSION,
        "tensors": [
            {"key": k, "dtype": dtype_name(t.dtype), "shape": list(t.shape), "nbytes": t.numel() * t.element_size()}
            for k, t in tensors.items()
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    prefix = _PREFIX.pack(MAGIC, len(head)) + head
    total = len(prefix) + sum(e["nbytes"] for e in header["tensors"]) + DIGEST_BYTES

    def pieces() -> Iterator[memoryview | bytes]:
        digest = hashlib.sha256(prefix)
        yield prefix
        for t in tensors.values():
            view = _tensor_bytes(t)
            digest.update(view)
            yield view
        yield digest.digest()

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
    """Check and parse a whole snapshot; tensors view `blob` without copying.

    Raises:
        InvalidArgument: the bytes are not a Rewind buffer snapshot at all.
        DataLoss: the checksum fails, or the contents are inconsistent.
    """
    if len(blob) < _PREFIX.size + DIGEST_BYTES or bytes(blob[:8]) != MAGIC:
        raise InvalidArgument("chunk: the data is not a Rewind buffer snapshot (bad magic bytes)")
    body = memoryview(blob)[:-DIGEST_BYTES]
    if hashlib.sha256(body).digest() != bytes(blob[-DIGEST_BYTES:]):
        raise DataLoss(f"snapshot: sha256 mismatch over {len(blob)} bytes; the snapshot is truncated or corrupted")
    _, head_len = _PREFIX.unpack_from(blob)
    offset = _PREFIX.size + head_len
    try:
        header = json.loads(bytes(body[_PREFIX.size:offset]))
    except ValueError as exc:
        raise DataLoss(f"snapshot: header is not valid JSON ({exc})") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise DataLoss(f"snapshot: format_version {header.get('format_version')!r} is not supported")
    tensors: dict[str, torch.Tensor] = {}
    for spec in header["tensors"]:
        end = offset + spec["nbytes"]
        if end > len(body):
            raise DataLoss(f"snapshot: tensor {spec['key']!r} runs past the end of the data")
        try:
            dtype = getattr(torch, spec["dtype"])
            tensors[spec["key"]] = view_bytes(body[offset:end], dtype, spec["shape"], spec["key"])
        except InvalidArgument as exc:
            raise DataLoss(f"snapshot: {exc}") from None
        offset = end
    if offset != len(body):
        raise DataLoss(f"snapshot: {len(body) - offset} unexpected trailing bytes")
    return header, tensors
