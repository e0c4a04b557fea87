"""Garbage collection and the staging sweep: what retention and deletes doom, and what crashed or
abandoned uploads leave behind.

Buffer blocks (<agent>/<run>/blocks/<sha256>) are shared by every checkpoint of
the run that needs them, so no single checkpoint owns one. What keeps a
referenced block from ever being deleted, whatever is killed when:

- Save: blocks -> index and files -> manifest (under the run lock, after checking
  every block it references is present) -> unpin. An upload pins the blocks it
  found present and each one it writes (before its first byte), under the run
  lock; an abort unpins and never deletes a block (reservations.py).
- GC (apply_retention, delete): manifests first (each doomed one, then its step's
  files), THEN the references are listed afresh from the committed manifests, and
  only the doomed checkpoints' blocks that no committed manifest references and no
  upload pins are deleted. All under the run lock, which every commit also takes,
  so no commit can add a reference in between. Any unreadable manifest stops block
  deletion. Killed midway: orphan blocks only, which the sweep removes.
- Sweep (clean_staging): blocks older than staging_max_age_s, unreferenced (the
  same strict listing) and unpinned; temp files of crashed block writes and S3
  multipart uploads under blocks/ of the same age, unless their digest is pinned.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from rewind.errors import DataLoss, InvalidArgument, PermissionDenied, RewindError
from rewind_checkpoint.layout import BLOCKS_DIR, CheckpointKey, RunKey, is_digest, parse_step_dir, step_dir
from rewind_checkpoint.manifest import Manifest
from rewind_checkpoint.metrics import stats_of
from rewind_checkpoint.reservations import Reservations
from rewind_checkpoint.retention import to_delete
from rewind_checkpoint.store import ObjectInfo, PendingUpload

if TYPE_CHECKING:
    from rewind_checkpoint.catalog import Catalog

log = logging.getLogger(__name__)

# Blocks GC deletes per store call (tests lower it to stop between batches).
BLOCK_DELETE_BATCH = 1000
# What the file store leaves of a block write that never finished (store_file.py's _FileWriter temp name).
_BLOCK_TEMP = re.compile(r"\.([0-9a-f]{64})\.[0-9a-f]{8}\.part")


class GarbageCollector:
    """Deletes a catalog's doomed checkpoints and the blocks only they needed, and sweeps stale staging.

    Every decision is made under the run's lock (Catalog.run_lock), which commits take too.

    Args:
        catalog: whose checkpoints; its clock and staging_max_age_s are read at each call.
        reservations: what uploads in progress hold, which is never deleted.
    """

    def __init__(self, catalog: Catalog, reservations: Reservations) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.reservations = reservations

    def apply_retention(self, run: RunKey) -> list[Manifest]:
        """Delete the committed checkpoints no rule keeps, then the blocks only they needed; returns them.
        Call with the run's lock held."""
        doomed = to_delete(self.catalog.manifests(run), self.catalog.retention(run))
        for manifest in doomed:
            self._delete_locked(manifest.key)
        if doomed:
            log.info("retention removed %s", ", ".join(step_dir(m.step) for m in doomed))
            self._gc_blocks(run, {sha for m in doomed for sha in m.blocks})
        return doomed

    # -- deleting ------------------------------------------------------------

    def delete(self, key: CheckpointKey) -> None:
        """Delete a committed checkpoint (NotFound if there is none), then the blocks only it needed."""
        with self.catalog.run_lock(key.run):
            manifest = self.catalog.manifest(key)
            self._delete_locked(key)
            self._gc_blocks(key.run, set(manifest.blocks))

    def _delete_locked(self, key: CheckpointKey) -> None:
        # Manifest first: the checkpoint disappears atomically; a crash after
        # that leaves only staging, which clean_staging removes.
        self.store.delete([key.manifest_key])
        self.catalog.notify("deleted", key)
        self.store.delete([o.key for o in self.store.list(key.prefix)])

    def _referenced_blocks(self, run: RunKey) -> set[str] | None:
        """Every block a committed manifest of the run references, from a fresh listing; None when any
        manifest is unreadable (then nobody can tell which blocks are unused). Call with the run's lock held."""
        try:
            manifests = self.catalog.manifests(run, strict=True)
        except DataLoss as exc:
            log.warning("block clean-up of run %s skipped: %s; fix or delete that manifest", run, exc.message)
            return None
        return {sha for m in manifests for sha in m.blocks}

    def _gc_blocks(self, run: RunKey, candidates: set[str]) -> int:
        """Delete the candidates no committed manifest references and no upload pins; returns how many.

        Call with the run's lock held, after the doomed manifests are gone: the references are
        listed now, and no commit can add one until the lock is released. A store failure here
        is logged, not raised: the checkpoints are gone already, and what is left is orphan
        blocks, which the sweep removes.
        """
        if not candidates:
            return 0
        deleted = 0
        try:
            referenced = self._referenced_blocks(run)
            if referenced is None:
                return 0
            unused = candidates - referenced - self.reservations.pinned_locked(run)
            keys = [run.block_key(sha) for sha in sorted(unused)]
            for i in range(0, len(keys), BLOCK_DELETE_BATCH):
                batch = keys[i:i + BLOCK_DELETE_BATCH]
                self.store.delete(batch)
                deleted += len(batch)
                stats_of(self.catalog).blocks_deleted.inc(len(batch))
        except RewindError as exc:
            log.warning("block clean-up of run %s stopped after %d blocks: %s", run, deleted, exc.message)
        if deleted:
            log.info("removed %d blocks of run %s that no checkpoint needs any more", deleted, run)
        return deleted

    def clean_staging(self, run: RunKey | None = None) -> int:
        """Remove what crashed or abandoned uploads left: uncommitted files older than
        staging_max_age_s, and multipart uploads begun longer ago (S3), outside
        uploads in progress.

        Returns:
            How many objects and multipart uploads it removed.
        """
        removed = 0
        for r in [run] if run else self.catalog.run_keys():
            try:
                removed += self._clean_run(r)
            except PermissionDenied as exc:
                # A link planted in one run must not stop the sweep of the others.
                log.warning("staging clean-up of %s skipped: %s", r, exc.message)
        return removed + self._abort_stale_uploads(run)

    def _clean_run(self, run: RunKey) -> int:
        """clean_staging's objects of one run. The store lists no links, so nothing outside it is touched."""
        with self.catalog.run_lock(run):
            by_step: dict[str, list[ObjectInfo]] = defaultdict(list)
            objects = self.store.list(run.prefix)
            for obj in objects:
                rest = obj.key[len(run.prefix):].split("/")
                if len(rest) >= 2 and parse_step_dir(rest[0]) is not None:
                    by_step[rest[0]].append(obj)
            removed = 0
            now = self.catalog.clock()
            for name, step_objects in by_step.items():
                key = CheckpointKey(run, parse_step_dir(name))
                # Never a committed checkpoint, and never an upload in progress (the lock keeps the reservations still).
                if self.reservations.writing(key) or any(o.key == key.manifest_key for o in step_objects):
                    continue
                if min(now - o.modified for o in step_objects) < self.catalog.staging_max_age_s:
                    continue
                self.store.delete([o.key for o in step_objects])
                removed += len(step_objects)
                log.info("removed %d stale staging objects of %s", len(step_objects), key)
            return removed + self._sweep_blocks(run, [o for o in objects if o.key.startswith(run.blocks_prefix)],
                                                now)

    def _sweep_blocks(self, run: RunKey, objects: list[ObjectInfo], now: float) -> int:
        """The sweep of blocks/: blocks no committed manifest references, and temp files of block
        writes that never finished, older than staging_max_age_s and not pinned. Anything else there
        (another name, a sub-folder) is not ours and stays. Call with the run's lock held."""
        pins = self.reservations.pinned_locked(run)
        blocks, temps = [], []
        for obj in objects:
            name = obj.key[len(run.blocks_prefix):]
            if now - obj.modified < self.catalog.staging_max_age_s:
                continue
            temp = _BLOCK_TEMP.fullmatch(name)
            if temp is not None and temp.group(1) not in pins:
                temps.append(obj.key)
            elif is_digest(name) and name not in pins:
                blocks.append(name)
        referenced = self._referenced_blocks(run) if blocks else set()
        doomed = [] if referenced is None else [run.block_key(sha) for sha in blocks if sha not in referenced]
        if doomed or temps:
            self.store.delete(doomed + temps)
            stats_of(self.catalog).blocks_swept.inc(len(doomed))
            log.info("removed %d unused blocks and %d stale block temp files of run %s", len(doomed), len(temps), run)
        return len(doomed) + len(temps)

    def _abort_stale_uploads(self, run: RunKey | None) -> int:
        """Abort multipart uploads of checkpoint files begun over staging_max_age_s ago; returns how many.

        A service killed mid-save leaves its multipart uploads (and their
        parts, which S3 bills) forever; no object lists them. Uploads are
        grouped by run, because a run with no object yet is no folder that
        run_keys() would find.
        """
        cutoff = self.catalog.clock() - self.catalog.staging_max_age_s
        by_run: dict[RunKey, list[tuple[CheckpointKey | str, PendingUpload]]] = defaultdict(list)
        for upload in self.store.pending_uploads(run.prefix if run else ""):
            owner = staging_key(upload.key)
            if owner is not None and upload.initiated <= cutoff:
                by_run[owner[0]].append((owner[1], upload))
        aborted = 0
        for r, uploads in by_run.items():
            with self.catalog.run_lock(r):
                pinned = self.reservations.pinned_locked(r)
                for what, upload in uploads:
                    # Age is since the upload began: a long save still in progress keeps its parts,
                    # and so does the write of a block an upload pinned.
                    if what in pinned if isinstance(what, str) else self.reservations.writing(what):
                        continue
                    self.store.abort_upload(upload)
                    aborted += 1
                    log.info("aborted a stale multipart upload of %s", upload.key)
        return aborted



def staging_key(key: str) -> tuple[RunKey, CheckpointKey | str] | None:
    """Whose a file key is: (its run, its checkpoint) for <agent>/<run>/step-N/<file>, (its run, the
    digest) for <agent>/<run>/blocks/<sha256>; None for anything else in the store."""
    parts = key.split("/")
    if len(parts) == 4 and parts[2] == BLOCKS_DIR and is_digest(parts[3]):
        what: CheckpointKey | str | None = parts[3]
    else:
        what = parse_step_dir(parts[2]) if len(parts) >= 4 else None
    if what is None:
        return None
    try:
        run = RunKey.checked(parts[0], parts[1])
    except InvalidArgument:
        return None  # not ours: something else shares the bucket
    return run, (what if isinstance(what, str) else CheckpointKey(run, what))
