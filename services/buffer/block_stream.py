"""A capture as blocks: name the new ones, send those the store lacks, then the index.

The wire glue (rewind_buffer.servicer) turns these events into
SnapshotBlocksResponse messages; the block layout is rewind_buffer.blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rewind.errors import Internal
from rewind_buffer import blocks as block_format
from rewind_buffer import snapshot
from rewind_buffer.episode_buffer import BufferState


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


def stream_blocks(state: BufferState, stored: set[str], chunk_bytes: int
                  ) -> Iterator[BlockStart | IndexStart | bytes]:
    """The events of one SnapshotBlocks stream for a captured state (which it releases at the end).

    Args:
        state: from export_state() without copy (its `blocks` are sealed at the capture point).
        stored: names of the blocks the caller's store holds.
        chunk_bytes: the most bytes per chunk.
    """
    try:
        sealed = state.blocks
        if sealed is None and state.schema is not None:
            raise Internal("SnapshotBlocks: a copied state (export_state(copy=True)) has no sealed blocks")
        if sealed is not None:
            yield from _send_blocks(state, sealed, stored, chunk_bytes)
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


def _send_blocks(state: BufferState, sealed: block_format.Sealed, stored: set[str], chunk_bytes: int
                 ) -> Iterator[BlockStart | bytes]:
    """Name the capture's new blocks, then send every block the store lacks, each once."""
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
    sent = set(stored)
    for block in sealed.new:
        if block.sha256 not in sent:
            sent.add(block.sha256)
            yield BlockStart(block.sha256, block.size)
            yield from snapshot.chunked(block_format.block_pieces(capture, columns, block), chunk_bytes)
        capture.forget(block.start, block.start + block.rows)
