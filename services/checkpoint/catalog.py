"""Checkpoints on top of a Store: listing, lookup, verification, deletion,
retention and staging clean-up.

A checkpoint exists once its manifest.json exists; everything else under a
step directory is staging (an upload in progress, or left by a crash).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rewind.errors import AlreadyExists, DataLoss, InvalidArgument, NotFound, PermissionDenied
from rewind_checkpoint.layout import (
    MANIFEST,
    CheckpointKey,
    RunKey,
    check_id,
    parse_step_dir,
    split_path,
    step_dir,
)
from rewind_checkpoint.manifest import Manifest
from rewind_checkpoint.retention import RetentionPolicy, commit_order, rank_best, to_delete
from rewind_checkpoint.store import ObjectInfo, ObjectMissing, PendingUpload, Store

log = logging.getLogger(__name__)


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

    def manifests(self, run: RunKey, objects: list[ObjectInfo] | None = None) -> list[Manifest]:
        """A run's committed checkpoints, oldest commit first. Unreadable manifests are logged and skipped."""
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
        key = manifest.key.file_key(name)
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in self.store.read(key, chunk_bytes):
                size += len(chunk)
                if size > entry.size:
                    raise DataLoss(f"file {name} of {manifest.key} is larger than its manifest says "
                                   f"({entry.size} bytes); the stored object was modified")
                digest.update(chunk)
                yield chunk
        except ObjectMissing:
            raise DataLoss(f"file {name} of {manifest.key} is missing from the store") from None
        if size != entry.size:
            raise DataLoss(f"file {name} of {manifest.key} is {size} bytes, not {entry.size}: it was truncated")
        if digest.hexdigest() != entry.sha256:
            raise DataLoss(f"file {name} of {manifest.key} failed its sha256 check (expected {entry.sha256[:12]}..., "
                           f"got {digest.hexdigest()[:12]}...); the stored object is corrupt")

    def verify(self, manifest: Manifest, full: bool = True) -> None:
        """Check every file's size and (when `full`) its sha256.

        Raises:
            DataLoss: naming the first file that does not match.
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
        """Delete the committed checkpoints no rule keeps; returns them. Call with the run's lock held."""
        doomed = to_delete(self.manifests(run), self.retention(run))
        for manifest in doomed:
            self._delete_locked(manifest.key)
        if doomed:
            log.info("retention removed %s", ", ".join(step_dir(m.step) for m in doomed))
        return doomed

    # -- deleting ------------------------------------------------------------

    def delete(self, key: CheckpointKey) -> None:
        """Delete a committed checkpoint (NotFound if there is none)."""
        with self.run_lock(key.run):
            self.manifest(key)
            self._delete_locked(key)

    def _delete_locked(self, key: CheckpointKey) -> None:
        # Manifest first: the checkpoint disappears atomically; a crash after
        # that leaves only staging, which clean_staging removes.
        self.store.delete([key.manifest_key])
        self.notify("deleted", key)
        self.store.delete([o.key for o in self.store.list(key.prefix)])

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
            for obj in self.store.list(run.prefix):
                rest = obj.key[len(run.prefix):].split("/")
                if len(rest) >= 2 and parse_step_dir(rest[0]) is not None:
                    by_step[rest[0]].append(obj)
            removed = 0
            now = self.clock()
            for name, objects in by_step.items():
                key = CheckpointKey(run, parse_step_dir(name))
                # Never a committed checkpoint, and never an upload in progress (the lock keeps _active still).
                if key in self._active or any(o.key == key.manifest_key for o in objects):
                    continue
                if min(now - o.modified for o in objects) < self.staging_max_age_s:
                    continue
                self.store.delete([o.key for o in objects])
                removed += len(objects)
                log.info("removed %d stale staging objects of %s", len(objects), key)
            return removed

    def _abort_stale_uploads(self, run: RunKey | None) -> int:
        """Abort multipart uploads of checkpoint files begun over staging_max_age_s ago; returns how many.

        A service killed mid-save leaves its multipart uploads (and their
        parts, which S3 bills) forever; no object lists them. Uploads are
        grouped by run, because a run with no object yet is no folder that
        run_keys() would find.
        """
        cutoff = self.clock() - self.staging_max_age_s
        by_run: dict[RunKey, list[tuple[CheckpointKey, PendingUpload]]] = defaultdict(list)
        for upload in self.store.pending_uploads(run.prefix if run else ""):
            key = _staging_key(upload.key)
            if key is not None and upload.initiated <= cutoff:
                by_run[key.run].append((key, upload))
        aborted = 0
        for r, uploads in by_run.items():
            with self.run_lock(r):
                for key, upload in uploads:
                    # Age is since the upload began: a long save still in progress keeps its parts.
                    if key in self._active:
                        continue
                    self.store.abort_upload(upload)
                    aborted += 1
                    log.info("aborted a stale multipart upload of %s", upload.key)
        return aborted


def _staging_key(key: str) -> CheckpointKey | None:
    """The checkpoint a file key belongs to (<agent>/<run>/step-N/<file>); None for anything else in the store."""
    parts = key.split("/")
    step = parse_step_dir(parts[2]) if len(parts) >= 4 else None
    if step is None:
        return None
    try:
        return CheckpointKey(RunKey.checked(parts[0], parts[1]), step)
    except InvalidArgument:
        return None  # not ours: something else shares the bucket
