"""Content-addressed blocks of a buffer's storage, for checkpoints that cost what changed.

A block is an immutable run of consecutive storage rows, as they were when
it was sealed: every column's rows in turn (obs, action, reward, done, then
the int64 episode column), raw little-endian bytes with no header. Its name
is the sha256 of those bytes, so the checkpoint store keeps it once and the
same rows never travel twice.

`BlockMap` is how a buffer knows which rows are already in blocks. It covers
the used rows with extents, each a slot range that holds rows
[offset, offset + length) of one block. It watches the writer (the same
copy-before-overwrite hook captures use): a written row leaves its extent.
At each capture `seal` builds the map of that capture point: the extents
whose rows nothing wrote keep their blocks, and the rest, normally just the
episodes added since the last capture, become new blocks. Because the writer
fills the storage front to back, a checkpoint then uploads the new episodes
(and the rows an eviction invalidated), not the buffer.

Invariant (kept under the buffer's lock, which every write and every seal
holds): for each extent of the map, the storage's rows of its slot range are
byte-identical to the rows of its block at its offset. A write removes its
rows from the map's extents (`before_overwrite`, before the write), and a
block's name is only set from the rows of the capture that sealed it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from rewind.errors import DataLoss
from rewind_buffer import row_ranges
from rewind_buffer.schema import FIELDS, EpisodeSchema
from rewind_buffer.snapshot import tensor_bytes
from rewind_buffer.writer import TRAJ_KEY

COLUMNS = (*FIELDS, TRAJ_KEY)
DEFAULT_BLOCK_BYTES = 64 * 2**20
READ_CHUNK_BYTES = 4 * 2**20  # a block reads the capture this much at a time (each read takes the buffer's lock)
DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Column:
    """One storage column as blocks lay it out."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]  # per row

    @property
    def row_bytes(self) -> int:
        return torch.Size(self.shape).numel() * self.dtype.itemsize


def columns_of(schema: EpisodeSchema) -> list[Column]:
    """The columns of a buffer with `schema`, in block order."""
    return [*(Column(key, schema.fields[key].dtype, schema.fields[key].shape) for key in FIELDS),
            Column(TRAJ_KEY, torch.int64, ())]


def row_bytes(schema: EpisodeSchema) -> int:
    """Bytes one row takes in a block."""
    return sum(c.row_bytes for c in columns_of(schema))


class Block:
    """A sealed run of rows: where they were when sealed, how many, and (once hashed) its name."""

    __slots__ = ("start", "rows", "size", "sha256")

    def __init__(self, start: int, rows: int, size: int, sha256: str | None = None) -> None:
        self.start, self.rows, self.size, self.sha256 = start, rows, size, sha256

    def __repr__(self) -> str:
        return f"Block({(self.sha256 or 'unhashed')[:12]}, rows={self.rows})"


@dataclass(frozen=True)
class Extent:
    """Storage slots [start, end) hold rows [offset, offset + end - start) of `block`."""

    start: int
    end: int
    block: Block
    offset: int


@dataclass
class Sealed:
    """A capture's view of the blocks: the extents covering its used rows, and the blocks it sealed itself."""

    extents: list[Extent]
    new: list[Block]

    def blocks(self) -> list[Block]:
        """Every block the extents reference, once per name, in slot order (the order a restore sends them).

        Two blocks with the same rows have the same name: one of them stands for both.
        """
        seen: dict[object, Block] = {}
        for extent in self.extents:
            seen.setdefault(extent.block.sha256 or id(extent.block), extent.block)
        return list(seen.values())


class BlockMap:
    """Which used rows of a storage are already in blocks (see the module docstring)."""

    def __init__(self, schema_row_bytes: int, extents: list[Extent] | None = None) -> None:
        self.row_bytes = schema_row_bytes
        self._extents: list[Extent] = list(extents or [])
        self._written: row_ranges.Ranges = []  # rows written since the last seal

    # -- the writer's side (EpisodeWriter.watchers) ----------------------------

    def before_overwrite(self, start: int, end: int, keys: tuple[str, ...] | None = None) -> None:
        """Rows [start, end) are about to change (any column): they leave their blocks at the next seal."""
        self._written = row_ranges.add(self._written, start, end)

    # -- captures -------------------------------------------------------------

    def seal(self, used: int, block_bytes: int) -> Sealed:
        """The map of rows [0, used) as of now; called under the buffer's lock, at the capture point.

        Extents untouched since the last seal keep their blocks; the rest of
        [0, used) is cut into new blocks of at most `block_bytes` (a block is
        never less than one row), to be hashed from this capture's rows.
        Blocks never hashed (their capture was never streamed) are sealed again.
        """
        kept: list[Extent] = []
        for extent in self._extents:
            if extent.block.sha256 is None:
                continue
            pieces = [(extent.start, min(extent.end, used))]
            for lo, hi in self._written:
                pieces = row_ranges.subtract(pieces, lo, hi)
            kept += [Extent(a, b, extent.block, extent.offset + a - extent.start) for a, b in pieces if a < b]
        rows_per_block = max(1, block_bytes // max(1, self.row_bytes))
        new: list[Block] = []
        for lo, hi in row_ranges.complement([(e.start, e.end) for e in kept], 0, used):
            for a in range(lo, hi, rows_per_block):
                b = min(hi, a + rows_per_block)
                block = Block(a, b - a, (b - a) * self.row_bytes)
                new.append(block)
                kept.append(Extent(a, b, block, 0))
        kept.sort(key=lambda e: e.start)
        self._extents, self._written = kept, []
        return Sealed(list(kept), new)

    def reseal(self, sealed: Sealed, missing: set[str]) -> None:
        """Give the extents of blocks named in `missing` (the store lacks them) new blocks of their own rows.

        A block sealed earlier may hold rows the storage no longer has, so it
        cannot be rebuilt; the rows its extents still hold can. Called under
        the buffer's lock; the map adopts the new blocks where it still holds
        the same extents, so the next checkpoint needs no second upload.
        """
        for i, extent in enumerate(sealed.extents):
            if extent.block.sha256 not in missing:
                continue
            rows = extent.end - extent.start
            block = Block(extent.start, rows, rows * self.row_bytes)
            replacement = Extent(extent.start, extent.end, block, 0)
            sealed.extents[i] = replacement
            sealed.new.append(block)
            self._extents = [replacement if e == extent else e for e in self._extents]

    def set_name(self, block: Block, sha256: str) -> None:
        """Record a block's name (under the buffer's lock, since seal() reads it)."""
        block.sha256 = sha256

    # -- the index ------------------------------------------------------------

    @staticmethod
    def to_index(sealed: Sealed) -> dict:
        """The index's `blocks` ([sha256, rows]) and `extents` ([start, end, block number, offset]), as JSON."""
        blocks = sealed.blocks()
        number = {b.sha256: i for i, b in enumerate(blocks)}
        return {"blocks": [[b.sha256, b.rows] for b in blocks],
                "extents": [[e.start, e.end, number[e.block.sha256], e.offset] for e in sealed.extents]}

    @classmethod
    def from_index(cls, schema_row_bytes: int, blocks: list[list], extents: list[list]) -> BlockMap:
        """The map of a restored buffer (checked by snapshot_check.parse_index): its rows are in those blocks."""
        made = [Block(0, rows, rows * schema_row_bytes, sha) for sha, rows in blocks]
        return cls(schema_row_bytes, [Extent(a, b, made[n], offset) for a, b, n, offset in extents])


# -- reading blocks out of a capture ---------------------------------------------------------------


def block_pieces(capture, columns: list[Column], block: Block) -> Iterator[memoryview]:
    """The bytes of a block the capture sealed: its rows of each column in turn, read from the capture.

    `capture` is a RowCapture (read_range under the buffer's lock, a chunk at a time).
    """
    for column in columns:
        step = max(1, READ_CHUNK_BYTES // max(1, column.row_bytes))
        for a in range(block.start, block.start + block.rows, step):
            rows = capture.read_range(column.key, a, min(a + step, block.start + block.rows))
            yield tensor_bytes(rows)


def hash_block(capture, columns: list[Column], block: Block) -> str:
    """The name (sha256 hex) of a block the capture sealed."""
    digest = hashlib.sha256()
    for piece in block_pieces(capture, columns, block):
        digest.update(piece)
    return digest.hexdigest()


# -- writing blocks into a restored storage ----------------------------------------------------------


class BlockLoader:
    """Writes one block's bytes, as they arrive, into the storage slots the index maps to it.

    Only whole rows are written; a row split across chunks waits for its
    tail. The bytes are hashed as they arrive, and `finish()` refuses a block
    whose size or sha256 is not the one the index names (DATA_LOSS).
    """

    def __init__(self, storage_columns: dict[str, torch.Tensor], columns: list[Column], sha256: str, rows: int,
                 places: list[tuple[int, int, int]]) -> None:
        """A loader for one block.

        Args:
            storage_columns: the new storage's column tensors (capacity rows each).
            columns: the block's columns, in order.
            sha256: the block's name.
            rows: its rows.
            places: (slot start, slot end, block offset) of every extent that references it.
        """
        self.columns, self.sha256, self.rows, self.places = columns, sha256, rows, places
        self.size = rows * sum(c.row_bytes for c in columns)
        self.received = 0
        self._storage = storage_columns
        self._digest = hashlib.sha256()
        self._column, self._row = 0, 0
        self._pending = b""

    def feed(self, data: bytes) -> None:
        """Take the next chunk of the block.

        Raises:
            DataLoss: the block runs past its size.
        """
        self.received += len(data)
        if self.received > self.size:
            raise DataLoss(f"block {self.sha256[:12]}...: more than the {self.size:,} bytes its index declares")
        self._digest.update(data)
        buffer = bytearray(self._pending)
        buffer += data  # writable: torch.frombuffer views it without a warning
        view, used = memoryview(buffer), 0
        while self._column < len(self.columns):
            column = self.columns[self._column]
            whole = min((len(view) - used) // column.row_bytes, self.rows - self._row) if column.row_bytes else (
                self.rows - self._row)
            if whole <= 0:
                break
            self._write(column, self._row, view[used: used + whole * column.row_bytes], whole)
            used += whole * column.row_bytes
            self._row += whole
            if self._row == self.rows:
                self._column, self._row = self._column + 1, 0
        self._pending = bytes(view[used:])

    def finish(self) -> None:
        """Check the whole block arrived with its name's sha256.

        Raises:
            DataLoss: it is short, or its bytes are not the ones its name says.
        """
        if self.received != self.size:
            raise DataLoss(f"block {self.sha256[:12]}...: {self.received:,} bytes arrived, not the {self.size:,} "
                           "its index declares")
        if self._digest.hexdigest() != self.sha256:
            raise DataLoss(f"block {self.sha256[:12]}...: its bytes have sha256 {self._digest.hexdigest()[:12]}...; "
                           "the stored block is corrupt")

    def _write(self, column: Column, first: int, data: memoryview, count: int) -> None:
        """Rows [first, first + count) of `column` of the block, into every slot range that holds them."""
        if not len(data):
            return  # a field with no elements per step: nothing to write
        target = self._storage[column.key]
        rows = torch.frombuffer(data, dtype=torch.uint8).view(column.dtype).reshape(count, *column.shape)
        for start, end, offset in self.places:
            lo, hi = max(first, offset), min(first + count, offset + end - start)
            if lo < hi:
                target[start + lo - offset: start + hi - offset] = rows[lo - first: hi - first].to(target.device)

