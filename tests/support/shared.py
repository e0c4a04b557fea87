"""Results that several test workers need, computed by one of them.

Under pytest-xdist each worker is its own process, so a module- or session-scoped fixture runs
once per worker that needs it. For an expensive result that does not depend on the worker (an
uninterrupted reference training run), the first worker to ask computes it under a file lock in
the folder all workers' temporary folders share, and the others read what it wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from filelock import FileLock

T = TypeVar("T")


def computed_once(tmp_path_factory: pytest.TempPathFactory, name: str, compute: Callable[[Path], T],
                  save: Callable[[T, Path], None], load: Callable[[Path], T]) -> T:
    """`compute(folder)` in the first worker that asks, `load(file)` of what it saved in the others.

    Args:
        name: the result's file name, unique in the session.
        compute: makes the result; gets a fresh folder of its own.
        save: writes the result to a file.
        load: reads the file back.
    """
    shared = tmp_path_factory.getbasetemp().parent  # the session's folder (each worker's basetemp is in it)
    path = shared / name
    with FileLock(str(path) + ".lock"):
        if path.exists():
            return load(path)
        result = compute(tmp_path_factory.mktemp(name))
        save(result, path.with_suffix(".partial"))
        path.with_suffix(".partial").rename(path)
        return result
