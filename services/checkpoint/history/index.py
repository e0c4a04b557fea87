"""RunIndex: what the history pages read of each run, cached and refreshed incrementally.

A run's entry holds its committed manifests (by step), its status.json and its
retention policy. A refresh lists the run's folders once (`store.list_dirs`)
and GETs only the manifests it has not cached yet; folders that went away are
dropped. Entries are marked stale by the Catalog when this process commits,
deletes or changes a run (the index is a CatalogListener), and after `ttl_s`
seconds in any case, which bounds how long a writer in another process (a
second service, or a trainer's PutRunFile through another replica) stays unseen.

Nothing lives only here: every entry is rebuilt from the store after a restart.
Listing folders rather than every object keeps a refresh to a page or two of a
listing for 1,000 checkpoints, at a price for writers in other processes only:
a checkpoint another process deletes stays shown until its folder is gone (its
delete removes the files right after the manifest; after a crash in between,
the staging sweep), and one deleted and committed again at the same step keeps
its old manifest until this process changes the run or restarts (the trainer
never reuses a step).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rewind.errors import DataLoss, InvalidArgument, NotFound
from rewind.run_history import STATUS_FILE
from rewind_checkpoint.catalog import Catalog, CatalogListener
from rewind_checkpoint.layout import CheckpointKey, RunKey, parse_step_dir
from rewind_checkpoint.manifest import Manifest
from rewind_checkpoint.retention import RetentionPolicy, commit_order
from rewind_checkpoint.store import ObjectMissing

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 2.0
# Manifests fetched at once on a cold refresh: S3 answers each GET in a few ms, but
# a run of 1,000 checkpoints read one by one would take seconds.
FETCH_THREADS = 8
# A refresh that raced a change of this process is redone, at most this many times.
MAX_RETRIES = 3


@dataclass(frozen=True)
class RunView:
    """One run as the index last read it.

    Attributes:
        run: the run.
        manifests: its committed checkpoints, oldest commit first.
        status: status.json as a dict, or None when the run has none.
        retention: the policy that applies (the run's own or the default).
        problems: what could not be read (an unreadable manifest, status or policy), for the page.
    """

    run: RunKey
    manifests: tuple[Manifest, ...]
    status: dict[str, Any] | None
    retention: RetentionPolicy
    problems: tuple[str, ...] = ()

    def by_step(self, step: int) -> Manifest | None:
        return next((m for m in self.manifests if m.step == step), None)


@dataclass
class _Entry:
    manifests: dict[int, Manifest] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)  # step -> why; not fetched again
    view: RunView | None = None
    checked: float = -float("inf")
    generation: int = 0  # bumped by each change this process makes to the run
    stale: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)  # one refresh of a run at a time


class RunIndex(CatalogListener):
    """Cached RunViews of a catalog's runs.

    Args:
        catalog: the store's checkpoints; the index registers itself as its listener.
        ttl_s: an entry is re-read after this many seconds even if this process changed nothing.
        clock: monotonic seconds (tests move it).
    """

    def __init__(self, catalog: Catalog, ttl_s: float = DEFAULT_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[RunKey, _Entry] = {}
        self._guard = threading.Lock()
        self.refreshes = 0  # how many refreshes ran (the tests and the benchmark read it)
        self.fetches = 0  # how many manifests were fetched
        catalog.add_listener(self)

    # -- the catalog's changes -------------------------------------------------

    def _touch(self, run: RunKey, change: Callable[[_Entry], None] = lambda e: None) -> None:
        with self._guard:
            entry = self._entries.get(run)
            if entry is not None:
                change(entry)
                entry.generation += 1
                entry.stale = True

    def committed(self, manifest: Manifest) -> None:
        # Kept at once, so the refresh that follows only lists the run's folders.
        self._touch(manifest.key.run, lambda e: e.manifests.__setitem__(manifest.step, manifest))

    def deleted(self, key: CheckpointKey) -> None:
        self._touch(key.run, lambda e: e.manifests.pop(key.step, None))

    def run_changed(self, run: RunKey) -> None:
        self._touch(run)

    # -- reading ---------------------------------------------------------------

    def run_keys(self, agent_id: str = "") -> list[RunKey]:
        """The runs in the store (or of one agent), listed afresh on every call."""
        runs = self.catalog.run_keys(agent_id)
        if not agent_id:
            with self._guard:
                for gone in set(self._entries) - set(runs):
                    del self._entries[gone]
        return runs

    def view(self, run: RunKey) -> RunView:
        """The run as the store holds it (at most ttl_s old for changes other processes make).

        Raises:
            NotFound: the store holds nothing of the run.
            StoreUnavailable: the store cannot be read.
        """
        with self._guard:
            entry = self._entries.setdefault(run, _Entry())
        with entry.lock:
            for _ in range(MAX_RETRIES):
                if self._fresh(entry):
                    break
                self._refresh(run, entry)
        if entry.view is None:
            with self._guard:
                self._entries.pop(run, None)  # never cache a name nobody used
            raise NotFound(f"run_id: no run {run} in {self.store.url}")
        return entry.view

    def _fresh(self, entry: _Entry) -> bool:
        with self._guard:
            return not entry.stale and self.clock() - entry.checked < self.ttl_s

    def _refresh(self, run: RunKey, entry: _Entry) -> None:
        """Re-read the run: one listing, the manifests not cached yet, status.json and retention.json."""
        with self._guard:
            generation, cached, unreadable = entry.generation, dict(entry.manifests), dict(entry.unreadable)
        started = self.clock()
        self.refreshes += 1
        names = self.store.list_dirs(run.prefix)
        steps = {s for s in map(parse_step_dir, names) if s is not None}
        manifests = {s: cached[s] for s in steps if s in cached}
        unreadable = {s: why for s, why in unreadable.items() if s in steps}
        missing = sorted(steps - manifests.keys() - unreadable.keys())
        for step, found in zip(missing, self._fetch(run, missing), strict=True):
            if isinstance(found, Manifest):
                manifests[step] = found
            elif found is not None:
                unreadable[step] = found
        status, status_problem = self._status(run)
        retention, retention_problem = self._retention(run)
        exists = bool(names) or status is not None or bool(self.store.list(run.prefix))
        problems = tuple(filter(None, (*unreadable.values(), status_problem, retention_problem)))
        view = RunView(run, tuple(commit_order(manifests.values())), status, retention, problems) if exists else None
        with self._guard:
            if entry.generation != generation:
                # This process changed the run meanwhile: the caller reads it again. A first read is
                # kept all the same (still stale), so that a run saved to non-stop is never "not found".
                entry.view = entry.view or view
                return
            entry.manifests, entry.unreadable, entry.view = manifests, unreadable, view
            entry.checked, entry.stale = started, False

    def _fetch(self, run: RunKey, steps: list[int]) -> list[Manifest | str | None]:
        """Each step's manifest, or why it is unreadable (str), or None (no manifest: staging)."""
        self.fetches += len(steps)

        def one(step: int) -> Manifest | str | None:
            key = CheckpointKey(run, step)
            try:
                return Manifest.from_json(self.store.get(key.manifest_key), self.catalog.path(key))
            except ObjectMissing:
                return None  # an upload in progress or abandoned; it is fetched again next time
            except DataLoss as exc:
                log.warning("history skips %s", exc.message)
                return exc.message

        if len(steps) <= 1:
            return [one(s) for s in steps]
        with ThreadPoolExecutor(min(FETCH_THREADS, len(steps)), thread_name_prefix="rewind-history") as pool:
            return list(pool.map(one, steps))

    def _status(self, run: RunKey) -> tuple[dict[str, Any] | None, str]:
        """status.json as a dict (None when absent), and why it could not be read."""
        key = run.history_key(STATUS_FILE)
        try:
            body = json.loads(self.store.get(key))
        except ObjectMissing:
            return None, ""
        except (ValueError, UnicodeDecodeError) as exc:
            return None, f"{self.store.location(key)} is unreadable ({exc})"
        if not isinstance(body, dict):
            return None, f"{self.store.location(key)} is not a JSON object"
        return body, ""

    def _retention(self, run: RunKey) -> tuple[RetentionPolicy, str]:
        try:
            return self.catalog.retention(run), ""
        except (DataLoss, InvalidArgument) as exc:  # a policy file someone edited by hand
            return RetentionPolicy(), exc.message
