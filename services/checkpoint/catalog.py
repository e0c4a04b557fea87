"""Checkpoints on top of a Store: listing, lookup, verification, deletion,
retention and staging clean-up.

A checkpoint exists once its manifest.json exists; everything else under a
step directory is staging (an upload in progress, or left by a crash).

Buffer blocks (<agent>/<run>/blocks/<sha256>) are shared by every checkpoint of
the run that needs them, so no single checkpoint owns one. What keeps a
referenced block from ever being deleted, whatever is killed when:

- Save: blocks -> index and files -> manifest (under the run lock, after checking
  every block it references is present) -> unpin. An upload pins the blocks it
  found present and each one it writes (before its first byte), under the run
  lock; an abort unpins and never deletes a block.
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

import hashlib
import logging
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rewind.errors import AlreadyExists, DataLoss, InvalidArgument, NotFound, PermissionDenied, RewindError
from rewind_checkpoint.layout import (
    BLOCKS_DIR,
    MANIFEST,
    CheckpointKey,
    RunKey,
    check_id,
    is_digest,
    parse_step_dir,
    split_path,
    step_dir,
)
from rewind_checkpoint.manifest import BlockInfo, Manifest
from rewind_checkpoint.metrics import stats_of
from rewind_checkpoint.retention import RetentionPolicy, commit_order, rank_best, to_delete
from rewind_checkpoint.store import ObjectInfo, ObjectMissing, PendingUpload, Store

log = logging.getLogger(__name__)

# Blocks GC deletes per store call (tests lower it to stop between batches).
BLOCK_DELETE_BATCH = 1000
# What the file store leaves of a block write that never finished (store.py's _FileWriter temp name).
_BLOCK_TEMP = re.compile(r"\.([0-9a-f]{64})\.[0-9a-f]{8}\.part")


class CatalogListener:
    """Told of the changes this process makes to a store, so readers that cache what they read (the
    history index) drop what became stale. Writers in other processes are not seen: such readers
    also re-read after a short time.

    Methods are called under the run's lock, after the change is in the store: they must be quick,
    and what they raise is logged, never passed to the writer.
    """

    def committed(self, manifest: Manifest) -> None:
        """A checkpoint was committed (its manifest written)."""

    def deleted(self, key: CheckpointKey) -> None:
        """A committed checkpoint was deleted (its manifest removed)."""

    def run_changed(self, run: RunKey) -> None:
        """Something else of the run changed: its retention policy or its history files."""


@dataclass(frozen=True)
class LookupResult:
    """The checkpoint found, and the ones passed over on the way (path, reason)."""

    manifest: Manifest
    skipped: tuple[tuple[str, str], ...] = ()


class Catalog:
    """The checkpoints in one store.

    Args:
        store: where the checkpoints live.
        staging_max_age_s: uncommitted files older than this, and multipart
            uploads begun longer ago, outside any upload in progress, are
            removed by `clean_staging`.
        clock: the time now, in epoch seconds (tests move it).
    """

    def __init__(self, store: Store, staging_max_age_s: float = 3600.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.staging_max_age_s = staging_max_age_s
        self.clock = clock
        self._run_locks: dict[RunKey, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()
        self._active: set[CheckpointKey] = set()
        # Block digests uploads in progress rely on (found present, or being written), per run.
        # Changed only under the run's lock; GC and the sweep never delete a pinned block.
        self._pins: dict[RunKey, Counter[str]] = defaultdict(Counter)
        # (file key, size, version) of files whose sha256 was checked; any rewrite
        # changes the version (S3 ETag; inode and mtime in ns on a file system).
        self._verified: set[tuple[str, int, str]] = set()
        self._listeners: list[CatalogListener] = []

    def path(self, key: CheckpointKey) -> str:
        return self.store.location(key.prefix.rstrip("/"))

    # -- listeners -----------------------------------------------------------

    def add_listener(self, listener: CatalogListener) -> None:
        """Tell `listener` of every commit, delete and run change made through this catalog from now on."""
        self._listeners.append(listener)

    @property
    def listeners(self) -> tuple[CatalogListener, ...]:
        return tuple(self._listeners)

    def notify(self, event: str, subject: Manifest | CheckpointKey | RunKey) -> None:
        """Call `event` ("committed", "deleted" or "run_changed") on every listener with `subject`."""
        for listener in self._listeners:
            try:
                getattr(listener, event)(subject)
            except Exception:
                # A reader's bookkeeping must never fail a save or a delete that already happened.
                log.exception("catalog listener %r failed on %s of %s", listener, event, subject)

    def run_lock(self, run: RunKey) -> threading.Lock:
        """Serialises commits, retention and deletes within a run."""
        with self._locks_guard:
            return self._run_locks[run]

    # -- uploads in progress -------------------------------------------------

    def begin_upload(self, key: CheckpointKey) -> None:
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

    def end_upload(self, key: CheckpointKey) -> None:
        with self.run_lock(key.run):
            self._active.discard(key)

    @property
    def active_uploads(self) -> set[CheckpointKey]:
        return set(self._active)

    # -- blocks: what is stored, and what uploads rely on ----------------------

    def stored_blocks(self, run: RunKey) -> dict[str, ObjectInfo]:
        """The run's blocks (sha256 -> object), from one listing of blocks/.

        Only well-formed digest names count: temp files of writes in progress and
        anything else in the folder are not blocks.
        """
        prefix = run.blocks_prefix
        found = {}
        for obj in self.store.list(prefix):
            name = obj.key[len(prefix):]
            if is_digest(name):
                found[name] = obj
        return found

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
            return set(self._pins.get(run, ()))

    # -- reading -------------------------------------------------------------

    def run_keys(self, agent_id: str = "") -> list[RunKey]:
        """Every run folder in the store (or under one agent)."""
        agents = [check_id(agent_id, "agent_id")] if agent_id else self.store.list_dirs("")
        runs = []
        for agent in agents:
            for run_id in self.store.list_dirs(f"{agent}/"):
                try:
                    runs.append(RunKey.checked(agent, run_id))
                except InvalidArgument:
                    continue  # not ours: something else shares the bucket
        return runs

    def list_runs(self, agent_id: str = "") -> list[tuple[RunKey, list[Manifest]]]:
        runs = [(run, self.manifests(run)) for run in self.run_keys(agent_id)]
        if agent_id and not runs:
            raise NotFound(f"agent_id: no runs of agent {agent_id!r} in {self.store.url}")
        return runs

    def manifests(self, run: RunKey, objects: list[ObjectInfo] | None = None, strict: bool = False) -> list[Manifest]:
        """A run's committed checkpoints, oldest commit first (only step-N/manifest.json: blocks/ and
        history/ are not checkpoints).

        Unreadable manifests are logged and skipped, unless `strict`: then the first
        raises DataLoss (what block GC needs: a skipped manifest's blocks would look unused).
        """
        objects = self.store.list(run.prefix) if objects is None else objects
        found = []
        for obj in objects:
            rest = obj.key[len(run.prefix):].split("/")
            if len(rest) != 2 or rest[1] != MANIFEST or parse_step_dir(rest[0]) is None:
                continue
            try:
                found.append(Manifest.from_json(self.store.get(obj.key), self.store.location(obj.key)))
            except ObjectMissing:
                continue  # deleted while listing
            except DataLoss as exc:
                if strict:
                    raise
                log.warning("skipping %s", exc)
        return commit_order(found)

    def run_manifests(self, run: RunKey) -> list[Manifest]:
        """Like manifests(), but NOT_FOUND for a run that has never existed."""
        objects = self.store.list(run.prefix)
        if not objects:
            raise NotFound(f"run_id: no run {run} in {self.store.url}")
        return self.manifests(run, objects)

    def manifest(self, key: CheckpointKey) -> Manifest:
        """One committed checkpoint's manifest.

        Raises:
            NotFound: the step has no committed checkpoint (listing the ones that exist).
        """
        try:
            data = self.store.get(key.manifest_key)
        except ObjectMissing:
            steps = [m.step for m in self.manifests(key.run)]
            if not steps and not self.store.list(key.run.prefix):
                raise NotFound(f"run_id: no run {key.run} in {self.store.url}") from None
            shown = ", ".join(str(s) for s in steps[-10:]) or "none"
            raise NotFound(f"step: {key} has no committed checkpoint (committed steps: {shown})") from None
        return Manifest.from_json(data, self.path(key))

    def resolve(self, agent_id: str, run_id: str, step: int, path: str) -> CheckpointKey:
        """A CheckpointRef's fields -> a key (path wins when given)."""
        if path:
            return self.resolve_path(path)[0]
        return CheckpointKey.checked(agent_id, run_id, step)

    def resolve_path(self, path: str) -> tuple[CheckpointKey, str]:
        """A path a user typed -> (the checkpoint's key, the file inside it it names, or "")."""
        inside = self.store.relative(path)
        if inside is None and path.startswith(("/", "file://")):
            raise InvalidArgument(f"path: {path} is not in this service's store {self.store.url} (symlinks "
                                  "are followed); name a checkpoint under it, or start a service on that store")
        return split_path(path if inside is None else inside, self.store.url)

    def read_file(self, manifest: Manifest, name: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream one file, checking its size and sha256 as it goes.

        Raises:
            NotFound: the checkpoint has no such file.
            DataLoss: the stored bytes do not match the manifest (raised after
                the last chunk, or as soon as the size overflows).
        """
        entry = manifest.file(name)
        if entry is None:
            names = ", ".join(f.name for f in manifest.files)
            raise NotFound(f"file: {manifest.key} has no file {name!r} (files: {names})")
        yield from self._read_checked(manifest.key.file_key(name), entry.size, entry.sha256,
                                      f"file {name} of {manifest.key}", chunk_bytes)

    def read_block(self, manifest: Manifest, block: BlockInfo, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream one of the blocks `manifest` needs, checking its size and sha256 as it goes.

        Raises:
            DataLoss: the block is missing, or its bytes do not match its name and
                the manifest's size (after the last chunk, or as soon as the size overflows);
                the message names the block and the checkpoint.
        """
        what = f"block {block.sha256} (blocks/ of run {manifest.key.run}), which {manifest.key} needs,"
        yield from self._read_checked(manifest.key.run.block_key(block.sha256), block.size, block.sha256, what,
                                      chunk_bytes)

    def _read_checked(self, key: str, size: int, sha256: str, what: str, chunk_bytes: int) -> Iterator[bytes]:
        """Stream a stored object, checking it against the size and sha256 a manifest holds for it."""
        digest = hashlib.sha256()
        got = 0
        try:
            for chunk in self.store.read(key, chunk_bytes):
                got += len(chunk)
                if got > size:
                    raise DataLoss(f"{what} is larger than its manifest says ({size} bytes); "
                                   "the stored object was modified")
                digest.update(chunk)
                yield chunk
        except ObjectMissing:
            raise DataLoss(f"{what} is missing from the store") from None
        if got != size:
            raise DataLoss(f"{what} is {got} bytes, not {size}: it was truncated")
        if digest.hexdigest() != sha256:
            raise DataLoss(f"{what} failed its sha256 check (expected {sha256[:12]}..., got "
                           f"{digest.hexdigest()[:12]}...); the stored object is corrupt")

    def verify(self, manifest: Manifest, full: bool = True) -> None:
        """Check every file's and every referenced block's size and (when `full`) sha256.

        A block shared by many checkpoints is hashed once per stored version (the
        `_verified` cache), so verifying each of them costs one listing of blocks/.

        Raises:
            DataLoss: naming the first file or block that does not match.
        """
        stored = {o.key: o for o in self.store.list(manifest.key.prefix)}
        for entry in manifest.files:
            obj = stored.get(manifest.key.file_key(entry.name))
            if obj is None:
                raise DataLoss(f"file {entry.name} of {manifest.key} is missing from the store")
            if obj.size != entry.size:
                raise DataLoss(f"file {entry.name} of {manifest.key} is {obj.size} bytes, not {entry.size}")
            stamp = (obj.key, obj.size, obj.version)
            if not full or stamp in self._verified:
                continue
            for _ in self.read_file(manifest, entry.name):
                pass
            self._verified.add(stamp)
        self._verify_blocks(manifest, full)

    def _verify_blocks(self, manifest: Manifest, full: bool) -> None:
        needed = manifest.blocks
        if not needed:
            return
        stored = self.stored_blocks(manifest.key.run)
        for sha256, size in needed.items():
            obj = stored.get(sha256)
            what = f"block {sha256} (blocks/ of run {manifest.key.run}), which {manifest.key} needs,"
            if obj is None:
                raise DataLoss(f"{what} is missing from the store")
            if obj.size != size:
                raise DataLoss(f"{what} is {obj.size} bytes, not {size}")
            stamp = (obj.key, obj.size, obj.version)
            if not full or stamp in self._verified:
                continue
            for _ in self.read_block(manifest, BlockInfo(sha256, size)):
                pass
            self._verified.add(stamp)

    def lookup_latest(self, run: RunKey, verify: bool = True) -> LookupResult:
        """The newest committed checkpoint that verifies; newer corrupt ones are skipped and reported."""
        manifests = self.run_manifests(run)
        if not manifests:
            raise NotFound(f"run_id: run {run} has no committed checkpoints in {self.store.url}")
        return self._first_good(manifests[::-1], verify, f"run {run}")

    def lookup_best(self, run: RunKey, metric: str, mode: str, verify: bool = True) -> LookupResult:
        """The best checkpoint by metric that verifies."""
        policy = self.retention(run)
        metric = metric or policy.metric
        mode = mode or policy.mode
        if not metric:
            raise InvalidArgument("best.metric: name the metric to rank by (the run's retention policy sets none)")
        if mode not in ("max", "min"):
            raise InvalidArgument(f"best.mode: must be 'max' or 'min', got {mode!r}")
        manifests = self.run_manifests(run)
        ranked = rank_best(manifests, metric, mode)
        if not ranked:
            known = sorted({k for m in manifests for k in m.metrics})
            raise NotFound(f"best.metric: no checkpoint of run {run} reports {metric!r} "
                           f"(metrics present: {', '.join(known) or 'none'})")
        return self._first_good(ranked, verify, f"run {run} by {metric} ({mode})")

    def lookup_exact(self, key: CheckpointKey, verify: bool = True, fall_back: bool = False) -> LookupResult:
        """One named checkpoint; if it does not verify, DataLoss, or with `fall_back` the newest
        older checkpoint of its run that does (the named one is reported as skipped)."""
        manifest = self.manifest(key)
        if not fall_back:
            self.verify(manifest, full=verify)
            return LookupResult(manifest)
        older = [m for m in self.manifests(key.run) if (m.created, m.step) < (manifest.created, manifest.step)]
        return self._first_good([manifest, *older[::-1]], verify, str(key))

    def _first_good(self, candidates: list[Manifest], verify: bool, what: str) -> LookupResult:
        skipped = []
        for manifest in candidates:
            try:
                self.verify(manifest, full=verify)
            except DataLoss as exc:
                log.warning("lookup skips %s: %s", manifest.key, exc.message)
                skipped.append((self.path(manifest.key), exc.message))
                continue
            if skipped:
                log.warning("lookup of %s fell back to %s after skipping %d corrupt checkpoint(s)",
                            what, manifest.key, len(skipped))
            return LookupResult(manifest, tuple(skipped))
        raise DataLoss(f"every checkpoint of {what} failed verification; first: {skipped[0][1]}")

    # -- retention -----------------------------------------------------------

    def retention(self, run: RunKey) -> RetentionPolicy:
        """The policy retention applies to a run: its own, else the default."""
        try:
            return self._stored_retention(run)
        except ObjectMissing:
            return RetentionPolicy()

    def run_retention(self, run: RunKey) -> RetentionPolicy:
        """The policy GetRetention reports: the run's own, or the default for a run that never set one.

        Raises:
            NotFound: the store holds nothing of the run (no policy, no checkpoint, no upload).
        """
        try:
            return self._stored_retention(run)
        except ObjectMissing:
            # SetRetention and Save create a run; a name nobody used is not one.
            if not self.store.list(run.prefix):
                raise NotFound(f"run_id: no run {run} in {self.store.url}") from None
            return RetentionPolicy()

    def _stored_retention(self, run: RunKey) -> RetentionPolicy:
        """The run's retention.json. Raises ObjectMissing when it has none, DataLoss when it is unreadable."""
        try:
            return RetentionPolicy.from_json(self.store.get(run.retention_key))
        except (ValueError, TypeError) as exc:
            raise DataLoss(f"{self.store.location(run.retention_key)} is unreadable ({exc}); "
                           "set the retention policy again") from None

    def set_retention(self, run: RunKey, policy: RetentionPolicy) -> None:
        with self.run_lock(run):
            self.store.put(run.retention_key, policy.to_json())
            self.notify("run_changed", run)

    def apply_retention(self, run: RunKey) -> list[Manifest]:
        """Delete the committed checkpoints no rule keeps, then the blocks only they needed; returns them.
        Call with the run's lock held."""
        doomed = to_delete(self.manifests(run), self.retention(run))
        for manifest in doomed:
            self._delete_locked(manifest.key)
        if doomed:
            log.info("retention removed %s", ", ".join(step_dir(m.step) for m in doomed))
            self._gc_blocks(run, {sha for m in doomed for sha in m.blocks})
        return doomed

    # -- deleting ------------------------------------------------------------

    def delete(self, key: CheckpointKey) -> None:
        """Delete a committed checkpoint (NotFound if there is none), then the blocks only it needed."""
        with self.run_lock(key.run):
            manifest = self.manifest(key)
            self._delete_locked(key)
            self._gc_blocks(key.run, set(manifest.blocks))

    def _delete_locked(self, key: CheckpointKey) -> None:
        # Manifest first: the checkpoint disappears atomically; a crash after
        # that leaves only staging, which clean_staging removes.
        self.store.delete([key.manifest_key])
        self.notify("deleted", key)
        self.store.delete([o.key for o in self.store.list(key.prefix)])

    def _referenced_blocks(self, run: RunKey) -> set[str] | None:
        """Every block a committed manifest of the run references, from a fresh listing; None when any
        manifest is unreadable (then nobody can tell which blocks are unused). Call with the run's lock held."""
        try:
            manifests = self.manifests(run, strict=True)
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
            keys = [run.block_key(sha) for sha in sorted(candidates - referenced - set(self._pins.get(run, ())))]
            for i in range(0, len(keys), BLOCK_DELETE_BATCH):
                batch = keys[i:i + BLOCK_DELETE_BATCH]
                self.store.delete(batch)
                deleted += len(batch)
                stats_of(self).blocks_deleted.inc(len(batch))
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
        for r in [run] if run else self.run_keys():
            try:
                removed += self._clean_run(r)
            except PermissionDenied as exc:
                # A link planted in one run must not stop the sweep of the others.
                log.warning("staging clean-up of %s skipped: %s", r, exc.message)
        return removed + self._abort_stale_uploads(run)

    def _clean_run(self, run: RunKey) -> int:
        """clean_staging's objects of one run. The store lists no links, so nothing outside it is touched."""
        with self.run_lock(run):
            by_step: dict[str, list[ObjectInfo]] = defaultdict(list)
            objects = self.store.list(run.prefix)
            for obj in objects:
                rest = obj.key[len(run.prefix):].split("/")
                if len(rest) >= 2 and parse_step_dir(rest[0]) is not None:
                    by_step[rest[0]].append(obj)
            removed = 0
            now = self.clock()
            for name, step_objects in by_step.items():
                key = CheckpointKey(run, parse_step_dir(name))
                # Never a committed checkpoint, and never an upload in progress (the lock keeps _active still).
                if key in self._active or any(o.key == key.manifest_key for o in step_objects):
                    continue
                if min(now - o.modified for o in step_objects) < self.staging_max_age_s:
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
        pins = self._pins.get(run, Counter())
        blocks, temps = [], []
        for obj in objects:
            name = obj.key[len(run.blocks_prefix):]
            if now - obj.modified < self.staging_max_age_s:
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
            stats_of(self).blocks_swept.inc(len(doomed))
            log.info("removed %d unused blocks and %d stale block temp files of run %s", len(doomed), len(temps), run)
        return len(doomed) + len(temps)

    def _abort_stale_uploads(self, run: RunKey | None) -> int:
        """Abort multipart uploads of checkpoint files begun over staging_max_age_s ago; returns how many.

        A service killed mid-save leaves its multipart uploads (and their
        parts, which S3 bills) forever; no object lists them. Uploads are
        grouped by run, because a run with no object yet is no folder that
        run_keys() would find.
        """
        cutoff = self.clock() - self.staging_max_age_s
        by_run: dict[RunKey, list[tuple[CheckpointKey | str, PendingUpload]]] = defaultdict(list)
        for upload in self.store.pending_uploads(run.prefix if run else ""):
            owner = _staging_key(upload.key)
            if owner is not None and upload.initiated <= cutoff:
                by_run[owner[0]].append((owner[1], upload))
        aborted = 0
        for r, uploads in by_run.items():
            with self.run_lock(r):
                for what, upload in uploads:
                    # Age is since the upload began: a long save still in progress keeps its parts,
                    # and so does the write of a block an upload pinned.
                    if what in self._active or what in self._pins.get(r, ()):
                        continue
                    self.store.abort_upload(upload)
                    aborted += 1
                    log.info("aborted a stale multipart upload of %s", upload.key)
        return aborted


def _staging_key(key: str) -> tuple[RunKey, CheckpointKey | str] | None:
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
