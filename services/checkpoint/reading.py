"""Reading and verifying checkpoints: a file's or block's bytes checked against the manifest as they
stream, a whole checkpoint verified, and lookups (latest, best, exact) that skip what fails verification.

A block shared by many checkpoints is hashed once per stored version (CheckpointReader's cache), so
verifying each of them costs one listing of blocks/.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rewind.errors import DataLoss, InvalidArgument, NotFound
from rewind_checkpoint.layout import CheckpointKey, RunKey
from rewind_checkpoint.manifest import BlockInfo, Manifest
from rewind_checkpoint.retention import rank_best
from rewind_checkpoint.store import ObjectMissing

if TYPE_CHECKING:
    from rewind_checkpoint.catalog import Catalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LookupResult:
    """The checkpoint found, and the ones passed over on the way (path, reason)."""

    manifest: Manifest
    skipped: tuple[tuple[str, str], ...] = ()


class CheckpointReader:
    """Reads and verifies the checkpoints of one catalog (Catalog.read_file, .verify, .lookup_* call it).

    Args:
        catalog: whose checkpoints; their manifests, blocks and retention policy come from it.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store = catalog.store
        # (file key, size, version) of files whose sha256 was checked; any rewrite
        # changes the version (S3 ETag; inode and mtime in ns on a file system).
        self._verified: set[tuple[str, int, str]] = set()

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
        stored = self.catalog.stored_blocks(manifest.key.run)
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
        manifests = self.catalog.run_manifests(run)
        if not manifests:
            raise NotFound(f"run_id: run {run} has no committed checkpoints in {self.store.url}")
        return self._first_good(manifests[::-1], verify, f"run {run}")

    def lookup_best(self, run: RunKey, metric: str, mode: str, verify: bool = True) -> LookupResult:
        """The best checkpoint by metric that verifies."""
        policy = self.catalog.retention(run)
        metric = metric or policy.metric
        mode = mode or policy.mode
        if not metric:
            raise InvalidArgument("best.metric: name the metric to rank by (the run's retention policy sets none)")
        if mode not in ("max", "min"):
            raise InvalidArgument(f"best.mode: must be 'max' or 'min', got {mode!r}")
        manifests = self.catalog.run_manifests(run)
        ranked = rank_best(manifests, metric, mode)
        if not ranked:
            known = sorted({k for m in manifests for k in m.metrics})
            raise NotFound(f"best.metric: no checkpoint of run {run} reports {metric!r} "
                           f"(metrics present: {', '.join(known) or 'none'})")
        return self._first_good(ranked, verify, f"run {run} by {metric} ({mode})")

    def lookup_exact(self, key: CheckpointKey, verify: bool = True, fall_back: bool = False) -> LookupResult:
        """One named checkpoint; if it does not verify, DataLoss, or with `fall_back` the newest
        older checkpoint of its run that does (the named one is reported as skipped)."""
        manifest = self.catalog.manifest(key)
        if not fall_back:
            self.verify(manifest, full=verify)
            return LookupResult(manifest)
        older = [m for m in self.catalog.manifests(key.run) if (m.created, m.step) < (manifest.created, manifest.step)]
        return self._first_good([manifest, *older[::-1]], verify, str(key))

    def _first_good(self, candidates: list[Manifest], verify: bool, what: str) -> LookupResult:
        skipped = []
        for manifest in candidates:
            try:
                self.verify(manifest, full=verify)
            except DataLoss as exc:
                log.warning("lookup skips %s: %s", manifest.key, exc.message)
                skipped.append((self.catalog.path(manifest.key), exc.message))
                continue
            if skipped:
                log.warning("lookup of %s fell back to %s after skipping %d corrupt checkpoint(s)",
                            what, manifest.key, len(skipped))
            return LookupResult(manifest, tuple(skipped))
        raise DataLoss(f"every checkpoint of {what} failed verification; first: {skipped[0][1]}")
