"""glibc malloc settings for the buffer service: a fixed mmap threshold, so freed copies go back to the OS.

glibc serves a block of at least its mmap threshold (128 KiB at start) with a
mmap of its own, returned to the OS on free. But it moves that threshold: each
time such a block is freed, the threshold rises to the block's size (up to 32
MiB) and the trim threshold, the free memory an arena may keep at its top, to
twice that (mallopt(3), "dynamic mmap threshold"). The buffer service's
Capture copies the whole storage (25.6 MiB for the obs column of 100,000
transitions of 64 float32), and the first such copy to be freed raises the
threshold past every later copy: those then come from the arena of whichever
gRPC thread serves the call, and each arena (up to 8 per core) keeps up to
twice a copy once it is freed. Under bench/soak.py (8 writers, 8 samplers, a
snapshot every 20 s, 29 MiB stored) RSS grew by about one copy per snapshot
until the arenas were full: 466 to 700 MiB (+50%) in the 9 minutes after
warm-up; with the thresholds fixed, 419 to at most 431 MiB (+2.9%).

Setting the thresholds once, at start-up, turns the adjustment off. 1 MiB
keeps the service's per-call blocks (a 256 x 4 x 64 float32 batch is 256 KiB,
an episode of 500 steps 148 KiB) in the arenas, where they are reused: with a
fixed 128 KiB, sampling and encoding a batch took 2.6 x the CPU (1.76 ms
against 0.67 ms) for the mmap and page faults of each block. Anything larger
(copies, snapshot chunks, restore buffers) is mmapped and unmapped when freed.
Columns of a copy under 1 MiB (a small buffer's) still come from the arenas,
which then keep a few MiB each at most: a bound, not a growth.

A MALLOC_MMAP_THRESHOLD_ or MALLOC_TRIM_THRESHOLD_ variable, or a glibc.malloc
tunable in GLIBC_TUNABLES, wins: then nothing is set here.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 2 * MMAP_THRESHOLD_BYTES  # the ratio glibc's own adjustment keeps
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")


def fix_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds for this process; returns whether they were set.

    Not set (False) off glibc, or when the environment sets them already.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in _USER_VARIABLES) or any(name in tunables for name in _USER_TUNABLES):
        log.debug("malloc thresholds left to the environment")
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    # Both: either one turns the adjustment off, but in a process where it has run already (a service
    # started in-process) both have moved.
    done = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and mallopt(M_MMAP_THRESHOLD,
                                                                             MMAP_THRESHOLD_BYTES) == 1
    log.debug("malloc thresholds: mmap %d, trim %d bytes (%s)", MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES,
              "set" if done else "refused")
    return done
