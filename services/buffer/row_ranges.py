"""Sets of storage rows as sorted lists of disjoint half-open ranges [(start, end), ...].

Captures track the rows they still need, and the block map the rows written
since the last capture, in this form: a handful of ranges, since the writer
fills the storage front to back.
"""

from __future__ import annotations

Ranges = list[tuple[int, int]]


def add(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """`ranges` with [lo, hi) added (touching ranges merge)."""
    if lo >= hi:
        return list(ranges)
    out: Ranges = []
    for a, b in ranges:
        if b < lo or a > hi:
            out.append((a, b))
        else:
            lo, hi = min(lo, a), max(hi, b)
    out.append((lo, hi))
    return sorted(out)


def subtract(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """`ranges` without [lo, hi)."""
    out: Ranges = []
    for a, b in ranges:
        if b <= lo or a >= hi:
            out.append((a, b))
            continue
        if a < lo:
            out.append((a, lo))
        if b > hi:
            out.append((hi, b))
    return out


def clip(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """The parts of `ranges` inside [lo, hi)."""
    return [(max(a, lo), min(b, hi)) for a, b in ranges if a < hi and b > lo]


def intersect(ranges: Ranges, others: Ranges) -> Ranges:
    """The rows in both."""
    return sorted(piece for lo, hi in others for piece in clip(ranges, lo, hi))


def complement(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """The parts of [lo, hi) that no range covers."""
    gaps, pos = [], lo
    for a, b in ranges:
        if b <= pos or a >= hi:
            continue
        if a > pos:
            gaps.append((pos, a))
        pos = max(pos, b)
    if pos < hi:
        gaps.append((pos, hi))
    return gaps


def covers(ranges: Ranges, lo: int, hi: int) -> bool:
    """Whether every row of [lo, hi) is in `ranges`."""
    return not complement(ranges, lo, hi)


def size(ranges: Ranges) -> int:
    """How many rows."""
    return sum(b - a for a, b in ranges)
