"""A capture as blocks: name the new ones, send those the store lacks, then the index.

The blocks the store lacks either travel in the stream (SnapshotBlocks) or go
straight to the store through a BlockSink (UploadBlocks: the stream then says
which blocks are needed and which are uploaded). The wire glue
(rewind_buffer.servicer) turns these events into messages; the block layout
is rewind_buffer.blocks.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from rewind.errors import Internal
from rewind_buffer import blocks as block_format
from rewind_buffer import snapshot
from rewind_buffer.buffer_state import BufferState


@dataclass(frozen=True)
class BlockStart:
    """A block the store lacks: its bytes follow as chunks."""

    sha256: str
    size: int


@dataclass(frozen=True)
class IndexStart:
    """The index, last: `size` bytes follow as chunks; `blocks` are every block it references, in order."""

    size: int
    blocks: tuple[tuple[str, int], ...]
    episodes_added: int


@dataclass(frozen=True)
class BlocksNeeded:
    """UploadBlocks' first event: the blocks the store lacks, each once, in upload order."""

    blocks: tuple[BlockStart, ...]


@dataclass(frozen=True)
class BlockUploaded:
    """A block the sink has put in the store."""

    sha256: str
    size: int


class BlockSink(Protocol):
    """Where UploadBlocks puts the blocks the store lacks (rewind_buffer.block_upload)."""

    def expect(self, needed: tuple[BlockStart, ...]) -> None:
        """Learn which blocks will come (after BlocksNeeded went out); may wait for the caller."""

    def put(self, block: BlockStart, pieces: Iterable[bytes | memoryview]) -> None:
        """Store one block's bytes; raises a RewindError when the store does not take them."""


Event = BlockStart | BlocksNeeded | BlockUploaded | IndexStart | bytes


def stream_blocks(state: BufferState, stored: set[str], chunk_bytes: int, sink: BlockSink | None = None
                  ) -> Iterator[Event]:
    """The events of one SnapshotBlocks (or, with a sink, UploadBlocks) stream for a captured state.

    The state is released at the end.

    Args:
        state: from export_state() without copy (its `blocks` are sealed at the capture point).
        stored: names of the blocks the caller's store holds.
        chunk_bytes: the most bytes per chunk.
        sink: where the blocks the store lacks go; None sends them in the stream.
    """
    try:
        sealed = state.blocks
        if sealed is None and state.schema is not None:
            raise Internal("SnapshotBlocks: a copied state (export_state(copy=True)) has no sealed blocks")
        if sink is not None:
            yield from _upload_blocks(state, sealed, stored, sink)
        elif sealed is not None:
            yield from _send_blocks(state, sealed, stored, chunk_bytes)
        if sealed is not None:
            index = block_format.BlockMap.to_index(sealed)
            refs = tuple((sha, rows * state.block_map.row_bytes) for sha, rows in index["blocks"])
            tensors = {"generator_state": state.tensors["generator_state"]}
        else:
            index, refs, tensors = {"blocks": [], "extents": []}, (), {}
        header = {**state.header(), "rows": state.rows.used if state.rows is not None else 0, **index}
        total, pieces = snapshot.encode(header, tensors, format_version=snapshot.INDEX_FORMAT_VERSION)
        yield IndexStart(total, refs, state.episodes_added)
        yield from snapshot.chunked(pieces, chunk_bytes)
    finally:
        state.release()


def _name_blocks(state: BufferState, sealed: block_format.Sealed, stored: set[str]) -> None:
    """Give each of the capture's new blocks its sha256 (and reseal the blocks the store lost)."""
    capture, block_map = state.rows, state.block_map
    columns = block_format.columns_of(state.schema)
    with capture.lock:
        # Blocks sealed earlier that the store lost (or never got): their rows may be gone, so the rows
        # their extents still hold become new blocks.
        block_map.reseal(sealed, {b.sha256 for b in sealed.blocks() if b.sha256 and b.sha256 not in stored})
        capture.keep_only([(b.start, b.start + b.rows) for b in sealed.new])
    for block in sealed.new:  # hashed outside the lock: the capture's reads take it a chunk at a time
        sha256 = block_format.hash_block(capture, columns, block)
        with capture.lock:
            block_map.set_name(block, sha256)


def _send_blocks(state: BufferState, sealed: block_format.Sealed, stored: set[str], chunk_bytes: int
                 ) -> Iterator[BlockStart | bytes]:
    """Name the capture's new blocks, then send every block the store lacks, each once."""
    _name_blocks(state, sealed, stored)
    capture, columns = state.rows, block_format.columns_of(state.schema)
    sent = set(stored)
    for block in sealed.new:
        if block.sha256 not in sent:
            sent.add(block.sha256)
            yield BlockStart(block.sha256, block.size)
            yield from snapshot.chunked(block_format.block_pieces(capture, columns, block), chunk_bytes)
        capture.forget(block.start, block.start + block.rows)


def _upload_blocks(state: BufferState, sealed: block_format.Sealed | None, stored: set[str], sink: BlockSink
                   ) -> Iterator[BlocksNeeded | BlockUploaded]:
    """Name the new blocks, say which the store lacks, then have the sink put each once."""
    if sealed is None:  # a buffer without storage has no blocks; the caller still answers the (empty) list
        yield BlocksNeeded(())
        sink.expect(())
        return
    _name_blocks(state, sealed, stored)
    capture, columns = state.rows, block_format.columns_of(state.schema)
    needed, seen = [], set(stored)
    for block in sealed.new:
        if block.sha256 not in seen:
            seen.add(block.sha256)
            needed.append(BlockStart(block.sha256, block.size))
    yield BlocksNeeded(tuple(needed))
    sink.expect(tuple(needed))
    uploaded = set(stored)
    for block in sealed.new:
        if block.sha256 not in uploaded:
            uploaded.add(block.sha256)
            sink.put(BlockStart(block.sha256, block.size), block_format.block_pieces(capture, columns, block))
            yield BlockUploaded(block.sha256, block.size)
        capture.forget(block.start, block.start + block.rows)
