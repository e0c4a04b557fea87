"""BlockMap: which used rows are already in blocks, and what a capture seals anew (no service, no torch storage)."""

from __future__ import annotations

from rewind_buffer import row_ranges
from rewind_buffer.blocks import BlockMap

ROW = 10  # bytes per row


def named(sealed, prefix: str = "x") -> None:
    """Name the capture's new blocks as SnapshotBlocks would (distinct names per block)."""
    for i, block in enumerate(sealed.new):
        block.sha256 = f"{prefix}{i:063x}"[-64:]


def spans(sealed) -> list[tuple[int, int, int]]:
    return [(e.start, e.end, e.offset) for e in sealed.extents]


def test_a_first_seal_cuts_the_rows_into_blocks_of_at_most_block_bytes():
    block_map = BlockMap(ROW)
    sealed = block_map.seal(250, block_bytes=100 * ROW)
    assert [(b.start, b.rows, b.size) for b in sealed.new] == [(0, 100, 1000), (100, 100, 1000), (200, 50, 500)]
    assert spans(sealed) == [(0, 100, 0), (100, 200, 0), (200, 250, 0)]


def test_only_written_rows_become_new_blocks_and_the_rest_keep_theirs_at_an_offset():
    block_map = BlockMap(ROW)
    first = block_map.seal(300, block_bytes=1000 * ROW)
    named(first)
    block_map.before_overwrite(120, 150)            # an episode written over old rows
    block_map.before_overwrite(150, 170, ("episode",))  # an eviction's invalidation: still a written row
    second = block_map.seal(300, block_bytes=1000 * ROW)
    assert [(b.start, b.rows) for b in second.new] == [(120, 50)]
    old = first.new[0]
    assert [(e.start, e.end, e.block is old, e.offset) for e in second.extents] == [
        (0, 120, True, 0), (120, 170, False, 0), (170, 300, True, 170)]


def test_growing_rows_are_sealed_and_an_unnamed_block_is_sealed_again():
    block_map = BlockMap(ROW)
    first = block_map.seal(100, block_bytes=1000 * ROW)
    # Never streamed: its block has no name, so the next capture seals those rows again, with the new ones.
    second = block_map.seal(180, block_bytes=1000 * ROW)
    assert [(b.start, b.rows) for b in second.new] == [(0, 180)]
    assert first.new[0] not in [e.block for e in second.extents]


def test_reseal_gives_a_lost_block_new_blocks_of_the_rows_its_extents_still_hold_and_the_map_adopts_them():
    block_map = BlockMap(ROW)
    named(block_map.seal(300, block_bytes=1000 * ROW))
    block_map.before_overwrite(100, 200)
    sealed = block_map.seal(300, block_bytes=1000 * ROW)
    named(sealed, "y")
    lost = sealed.extents[0].block.sha256
    block_map.reseal(sealed, {lost})
    assert [(b.start, b.rows) for b in sealed.new][-2:] == [(0, 100), (200, 100)]
    assert all(e.block.sha256 != lost for e in sealed.extents)
    named(sealed, "z")
    nothing_written = block_map.seal(300, block_bytes=1000 * ROW)
    assert nothing_written.new == [] and {e.block.sha256 for e in nothing_written.extents} == {
        e.block.sha256 for e in sealed.extents}


def test_the_index_round_trips_and_names_each_block_once():
    block_map = BlockMap(ROW)
    named(block_map.seal(300, block_bytes=1000 * ROW))
    block_map.before_overwrite(100, 150)
    sealed = block_map.seal(300, block_bytes=1000 * ROW)
    named(sealed, "q")
    index = BlockMap.to_index(sealed)
    assert [rows for _, rows in index["blocks"]] == [300, 50]  # the old block once, though two extents use it
    assert index["extents"] == [[0, 100, 0, 0], [100, 150, 1, 0], [150, 300, 0, 150]]
    restored = BlockMap.from_index(ROW, index["blocks"], index["extents"])
    again = restored.seal(300, block_bytes=1000 * ROW)
    assert again.new == [] and BlockMap.to_index(again) == index


def test_row_ranges():
    assert row_ranges.add([(0, 5), (10, 15)], 5, 10) == [(0, 15)]
    assert row_ranges.subtract([(0, 15)], 5, 10) == [(0, 5), (10, 15)]
    assert row_ranges.intersect([(0, 5), (10, 15)], [(3, 12)]) == [(3, 5), (10, 12)]
    assert row_ranges.complement([(2, 4), (6, 8)], 0, 10) == [(0, 2), (4, 6), (8, 10)]
    assert row_ranges.covers([(0, 5), (5, 9)], 1, 9) and not row_ranges.covers([(0, 5)], 1, 6)
