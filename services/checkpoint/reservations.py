"""What uploads in progress hold, which GC and the staging sweep must leave alone: the steps they are
writing and the buffer blocks they rely on (pins).

`Reservations` is the catalog-wide record (catalog.begin_upload, catalog.pin, ...); `UploadPins` is one
upload's share of the pins. Both change only under the run's lock (Catalog.run_lock), which GC and the
sweep hold while they decide, so they see a pin or no reliance on the block, never a pin half taken.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rewind.errors import AlreadyExists, Cancelled
from rewind_checkpoint.layout import CheckpointKey, RunKey
from rewind_checkpoint.store import Store

if TYPE_CHECKING:
    from rewind_checkpoint.catalog import Catalog

log = logging.getLogger(__name__)


class Reservations:
    """The steps uploads are writing, and the block digests they pin, per run.

    Args:
        store: the catalog's store (begin() drops stale staging from it).
        run_lock: the catalog's lock of a run.
    """

    def __init__(self, store: Store, run_lock: Callable[[RunKey], threading.Lock]) -> None:
        self.store = store
        self.run_lock = run_lock
        self._active: set[CheckpointKey] = set()
        self._pins: dict[RunKey, Counter[str]] = defaultdict(Counter)

    # -- steps being written ---------------------------------------------------

    def begin(self, key: CheckpointKey) -> None:
        """Reserve a step for an upload; stale staging in its directory is dropped.

        Raises:
            AlreadyExists: the step is committed, or another upload is writing it.
        """
        with self.run_lock(key.run):
            if key in self._active:
                raise AlreadyExists(f"step: an upload of {key} is already in progress")
            objects = self.store.list(key.prefix)
            if any(o.key == key.manifest_key for o in objects):
                raise AlreadyExists(f"step: {key} is already committed; delete it first or save another step")
            if objects:
                log.info("dropping %d uncommitted objects of %s left by an earlier upload", len(objects), key)
                self.store.delete([o.key for o in objects])
            self._active.add(key)

    def end(self, key: CheckpointKey) -> None:
        """Release a step begin() reserved."""
        with self.run_lock(key.run):
            self._active.discard(key)

    @property
    def active(self) -> set[CheckpointKey]:
        """The steps being written (a copy)."""
        return set(self._active)

    def writing(self, key: CheckpointKey) -> bool:
        """Whether an upload is writing this step. Call with the run's lock held, which keeps it so."""
        return key in self._active

    # -- blocks relied on ------------------------------------------------------

    def pin(self, run: RunKey, digests: Iterable[str], *, lock_held: bool = False) -> None:
        """Keep these blocks of `run` from GC and the sweep until unpinned (pins count: pin twice, unpin twice).

        Args:
            run: the run.
            digests: block sha256s.
            lock_held: the caller holds the run's lock already.
        """
        digests = list(digests)  # never a mapping's values as counts
        if lock_held:
            self._pins[run].update(digests)
            return
        with self.run_lock(run):
            self._pins[run].update(digests)

    def unpin(self, run: RunKey, digests: Iterable[str], *, lock_held: bool = False) -> None:
        """Drop pins taken by `pin` (see there)."""
        if not lock_held:
            with self.run_lock(run):
                return self.unpin(run, digests, lock_held=True)
        pins = self._pins[run]
        pins.subtract(list(digests))
        for digest in [d for d, n in pins.items() if n <= 0]:
            del pins[digest]
        if not pins:
            del self._pins[run]
        return None

    def pinned(self, run: RunKey) -> set[str]:
        """The run's pinned block digests (a copy)."""
        with self.run_lock(run):
            return self.pinned_locked(run)

    def pinned_locked(self, run: RunKey) -> set[str]:
        """pinned(), for a caller that holds the run's lock already."""
        return set(self._pins.get(run, ()))


class UploadPins:
    """The block pins of one upload: taken and dropped under the run's lock, so a GC or a sweep
    (same lock) sees either no pin and no reliance on the block, or the pin.

    Args:
        catalog: where the pins are kept.
        run: the upload's run.
    """

    def __init__(self, catalog: Catalog, run: RunKey) -> None:
        self.catalog = catalog
        self.run = run
        self.held: Counter[str] = Counter()
        self.closed = False  # after release nothing may be pinned: a late pull must not leak pins

    def present(self) -> dict[str, int]:
        """List the run's stored blocks and pin them all, at once under the lock; (sha256 -> size)."""
        with self.catalog.run_lock(self.run):
            self._check_open()
            stored = self.catalog.stored_blocks(self.run)
            self.catalog.pin(self.run, list(stored), lock_held=True)
            self.held.update(list(stored))
        return {sha: obj.size for sha, obj in stored.items()}

    def add(self, sha256: str) -> None:
        """Pin a block this upload is about to write (before its first byte)."""
        with self.catalog.run_lock(self.run):
            self._check_open()
            self.catalog.pin(self.run, [sha256], lock_held=True)
            self.held[sha256] += 1

    def release(self, *, lock_held: bool = False) -> None:
        """Drop every pin (after the commit, or on abort); later pins are refused."""
        if not lock_held:
            with self.catalog.run_lock(self.run):
                return self.release(lock_held=True)
        self.closed = True
        self.catalog.unpin(self.run, self.held.elements(), lock_held=True)
        self.held.clear()
        return None

    def _check_open(self) -> None:
        if self.closed:
            raise Cancelled(f"the upload to run {self.run} was aborted")
