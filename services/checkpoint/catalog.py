"""Checkpoints on top of a Store: the catalog every part of the service shares.

A checkpoint exists once its manifest.json exists; everything else under a
step directory is staging (an upload in progress, or left by a crash).

`Catalog` holds what the parts share: the store, the per-run locks, the
listeners, the committed manifests (listing and lookup by key or path) and each
run's retention policy. The rest is one module per concern, each reached through
the catalog's methods:

- reading.py: reading and verifying checkpoints (read_file, read_block, verify, lookup_*);
- reservations.py: what uploads in progress hold (begin_upload, pin, ...); upload.py is the upload itself;
- garbage.py: garbage collection and the staging sweep (apply_retention, delete, clean_staging), and
  why a referenced block is never deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from rewind.errors import DataLoss, InvalidArgument, NotFound
from rewind_checkpoint.garbage import GarbageCollector
from rewind_checkpoint.garbage import staging_key as _staging_key  # noqa: F401 (its old import path)
from rewind_checkpoint.layout import MANIFEST, CheckpointKey, RunKey, check_id, is_digest, parse_step_dir, split_path
from rewind_checkpoint.manifest import BlockInfo, Manifest
from rewind_checkpoint.reading import CheckpointReader, LookupResult
from rewind_checkpoint.reservations import Reservations
from rewind_checkpoint.retention import RetentionPolicy, commit_order
from rewind_checkpoint.store import ObjectInfo, ObjectMissing, Store

__all__ = ["Catalog", "CatalogListener", "LookupResult"]

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
        self._listeners: list[CatalogListener] = []
        self.reader = CheckpointReader(self)
        self.reservations = Reservations(store, self.run_lock)
        self.collector = GarbageCollector(self, self.reservations)

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

    # -- uploads in progress (reservations.py) ---------------------------------------

    def begin_upload(self, key: CheckpointKey) -> None:
        """Reserve a step for an upload (see Reservations.begin)."""
        self.reservations.begin(key)

    def end_upload(self, key: CheckpointKey) -> None:
        self.reservations.end(key)

    @property
    def active_uploads(self) -> set[CheckpointKey]:
        return self.reservations.active

    def pin(self, run: RunKey, digests: Iterable[str], *, lock_held: bool = False) -> None:
        """Keep these blocks of `run` from GC and the sweep until unpinned (see Reservations.pin)."""
        self.reservations.pin(run, digests, lock_held=lock_held)

    def unpin(self, run: RunKey, digests: Iterable[str], *, lock_held: bool = False) -> None:
        """Drop pins taken by `pin`."""
        self.reservations.unpin(run, digests, lock_held=lock_held)

    def pinned(self, run: RunKey) -> set[str]:
        """The run's pinned block digests (a copy)."""
        return self.reservations.pinned(run)

    # -- committed checkpoints and stored blocks --------------------------------------

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


    # -- reading and verifying (reading.py) ------------------------------------------

    def read_file(self, manifest: Manifest, name: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream one file, checking its size and sha256 as it goes (see CheckpointReader.read_file)."""
        return self.reader.read_file(manifest, name, chunk_bytes)

    def read_block(self, manifest: Manifest, block: BlockInfo, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream one block `manifest` needs, checking it as it goes (see CheckpointReader.read_block)."""
        return self.reader.read_block(manifest, block, chunk_bytes)

    def verify(self, manifest: Manifest, full: bool = True) -> None:
        """Check every file's and referenced block's size and sha256 (see CheckpointReader.verify)."""
        self.reader.verify(manifest, full)

    def lookup_latest(self, run: RunKey, verify: bool = True) -> LookupResult:
        """The newest committed checkpoint that verifies."""
        return self.reader.lookup_latest(run, verify)

    def lookup_best(self, run: RunKey, metric: str, mode: str, verify: bool = True) -> LookupResult:
        """The best checkpoint by metric that verifies."""
        return self.reader.lookup_best(run, metric, mode, verify)

    def lookup_exact(self, key: CheckpointKey, verify: bool = True, fall_back: bool = False) -> LookupResult:
        """One named checkpoint, or with `fall_back` the newest older one that verifies."""
        return self.reader.lookup_exact(key, verify, fall_back)

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

    # -- garbage collection and the sweep (garbage.py) ------------------------------

    def apply_retention(self, run: RunKey) -> list[Manifest]:
        """Delete the committed checkpoints no rule keeps, then the blocks only they needed; returns them.
        Call with the run's lock held."""
        return self.collector.apply_retention(run)

    def delete(self, key: CheckpointKey) -> None:
        """Delete a committed checkpoint (NotFound if there is none), then the blocks only it needed."""
        self.collector.delete(key)

    def clean_staging(self, run: RunKey | None = None) -> int:
        """Remove what crashed or abandoned uploads left (see GarbageCollector.clean_staging); returns
        how many objects and multipart uploads it removed."""
        return self.collector.clean_staging(run)
