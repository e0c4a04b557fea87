"""One checkpoint upload: header, announced files, buffer pulls, commit.

The protocol is checked message by message; any failure (or a stream that
ends without a Commit) aborts the upload and removes what it wrote, so
nothing becomes visible. Buffer snapshots are pulled from the buffer service
in background threads (pulls.py), started as soon as the header arrives, so
they reflect the moment of the save. The blocks a pull relies on are pinned
(reservations.UploadPins) until the manifest is committed or the upload
aborted; an abort never deletes a block.

SaveDirect (start(), then run()): an announced file with a sha256 and bytes
may skip this service. On a store that presigns, with direct_uploads on, the
header is answered with one presigned PUT per such file, to its final key in
the step folder; the key is recorded among the upload's keys before its URL
exists, so an abort deletes it. At the commit each granted object must be in
the store at its announced size, with the announced sha256 where the store
reports one (S3 checks the signed x-amz-checksum-sha256 header against the
body; moto does not). A PUT that lands after an abort leaves an object in a
step folder with no manifest: the staging sweep (catalog.clean_staging)
deletes it once it is older than staging_max_age_s, as any abandoned staging.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from google.protobuf import struct_pb2

from rewind import presigned
from rewind import versions as version_records
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.endpoints import check_entries
from rewind.errors import Cancelled, DataLoss, FailedPrecondition, InvalidArgument, RewindError, StoreUnavailable
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.dials import DEFAULT_BUFFER_ADDRESSES, check_dial, unreachable
from rewind_checkpoint.layout import CheckpointKey, check_digest, check_file_name, check_id
from rewind_checkpoint.manifest import FORMAT, BufferEntry, FileEntry, Manifest, now_rfc3339, struct_to_dict
from rewind_checkpoint.metrics import stats_of
from rewind_checkpoint.pulls import BlockPull, BufferPull, Written, pull_error, pull_kind
from rewind_checkpoint.reservations import UploadPins
from rewind_checkpoint.retention import RetentionPolicy
from rewind_checkpoint.store import ObjectMissing, ObjectWriter

log = logging.getLogger(__name__)

MAX_FILES = 1000


class Upload:
    """Consumes a Save stream and commits it, or leaves nothing behind.

    Args:
        catalog: where the checkpoint goes.
        timeout_s: deadline for pulling each buffer snapshot.
        buffer_addresses: the buffer services it may pull from (see dials.py).
        direct_uploads: let producers PUT blocks and large files to the store themselves, where it presigns.
    """

    def __init__(self, catalog: Catalog, timeout_s: float = 600.0,
                 buffer_addresses: tuple[str, ...] = DEFAULT_BUFFER_ADDRESSES, direct_uploads: bool = True) -> None:
        self.catalog = catalog
        self.direct_uploads = direct_uploads
        self.store = catalog.store
        self.timeout_s = timeout_s
        self.buffer_addresses = buffer_addresses
        self.key: CheckpointKey | None = None
        self.header: checkpoint_pb2.SaveHeader | None = None
        self.announced: dict[str, int] = {}
        self.written: dict[str, Written] = {}
        self.pulls: list[BufferPull] = []
        self._writer: ObjectWriter | None = None
        self._current: Written | None = None
        self._written_keys: list[str] = []
        self._pins: UploadPins | None = None
        self.sha256s: dict[str, str] = {}               # announced file -> the sha256 its announcement gave
        self.granted: dict[str, tuple[int, str]] = {}   # file PUT straight to the store -> (size, sha256)
        self.uploaded_bytes = 0       # what the commit wrote to the store: files, snapshots, new blocks
        self.deduplicated_bytes = 0   # bytes of blocks it references that the store already held
        self._started, self._stats = time.perf_counter(), stats_of(catalog)

    def start(self, requests: Iterator[checkpoint_pb2.SaveRequest]) -> list[checkpoint_pb2.FileGrant]:
        """SaveDirect's first message, the header: checked, buffer pulls started, direct uploads granted.

        Then run() takes the rest of the stream. If the caller goes away in between, call abandon().

        Returns:
            A presigned PUT for each announced file with a sha256 and bytes, where direct uploads are on
            and the store presigns that file; none otherwise (those files come as chunks).
        """
        with self._failing():
            first = next(requests, None)
            if first is None:
                raise InvalidArgument("header: the stream carried no messages")
            if first.WhichOneof("item") != "header":
                raise InvalidArgument("header: the first message must be a SaveHeader")
            self._on_header(first.header)
            return self._grant_files()

    def run(self, requests: Iterable[checkpoint_pb2.SaveRequest]) -> tuple[Manifest, list[Manifest]]:
        """Process the whole stream (after start(), the rest of it); returns (committed manifest,
        checkpoints retention deleted)."""
        with self._failing():
            result = self._commit(self._consume(requests))
        self._release()
        self._stats.committed(result[0].total_bytes, time.perf_counter() - self._started)
        return result

    def abandon(self) -> None:
        """The caller went away between start() and run(): remove what the upload wrote or granted."""
        self._stats.failed(Cancelled("the client went away"))
        self._abort()

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """Any failure in the block aborts the upload, which removes what it wrote and granted."""
        try:
            yield
        except StoreUnavailable as exc:
            self._stats.failed(exc)
            # The store is down: answer now, clean up when it returns (or the
            # staging sweep will), rather than holding the caller past its deadline.
            threading.Thread(target=self._abort, name="rewind-abort", daemon=True).start()
            raise
        except BaseException as exc:
            self._stats.failed(exc)
            self._abort()
            raise

    def _consume(self, requests: Iterable[checkpoint_pb2.SaveRequest]) -> checkpoint_pb2.Commit:
        """Take the stream's messages up to its end; returns its Commit."""
        commit = None
        for request in requests:
            if commit is not None:
                raise InvalidArgument("commit: must be the last message of the stream")
            kind = request.WhichOneof("item")
            if kind == "header":
                self._on_header(request.header)
            elif self.header is None:
                raise InvalidArgument("header: the first message must be a SaveHeader")
            elif kind == "chunk":
                self._on_chunk(request.chunk)
            elif kind == "commit":
                commit = request.commit
            else:
                raise InvalidArgument("item: empty SaveRequest")
        if self.header is None:
            raise InvalidArgument("header: the stream carried no messages")
        if commit is None:
            raise InvalidArgument("commit: the stream ended without a Commit; nothing was saved")
        return commit

    def _release(self) -> None:
        if self.key is not None:
            self.catalog.end_upload(self.key)

    # -- stream handling -----------------------------------------------------

    def _on_header(self, header: checkpoint_pb2.SaveHeader) -> None:
        if self.header is not None:
            raise InvalidArgument("header: sent twice; an upload has exactly one SaveHeader")
        key = CheckpointKey.checked(header.agent_id, header.run_id, header.step)
        if header.episode < 0:
            raise InvalidArgument(f"episode: must be zero or more, got {header.episode}")
        if len(header.files) + len(header.buffers) > MAX_FILES:
            raise InvalidArgument(f"files: {len(header.files) + len(header.buffers)} files; the limit is {MAX_FILES}")
        self._on_announcements(header.files)
        buffer_files = []
        for i, source in enumerate(header.buffers):
            if not source.address:
                raise InvalidArgument(f"buffers[{i}].address: is empty; give the buffer service's host:port")
            # Refused here, before anything is written, as well as before each dial.
            check_dial(source.address, self.buffer_addresses, f"buffers[{i}].address")
            check_id(source.buffer, f"buffers[{i}].buffer")
            name = check_file_name(source.file or f"{source.buffer}.snapshot", f"buffers[{i}].file")
            if name in self.announced or name in buffer_files:
                raise InvalidArgument(f"buffers[{i}].file: {name!r} is already used by another file")
            buffer_files.append(name)
        for name in ("config", "extra"):
            _check_json_numbers(getattr(header, name), f"header.{name}")
        if header.HasField("retention"):
            RetentionPolicy.from_proto(header.retention)  # validate before anything is written
        check_entries(header.store_endpoints, "header.store_endpoints")
        try:
            version_records.check(header.versions, "versions", version_records.PROCESS_KEYS)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if header.resumed_from:
            self.catalog.resolve("", "", 0, header.resumed_from)
        self.catalog.begin_upload(key)
        self.key, self.header = key, header
        self._pins = UploadPins(self.catalog, key.run)
        for i, (source, name) in enumerate(zip(header.buffers, buffer_files, strict=True)):
            args = (source, f"buffers[{i}].address", name, self._open(name), self.timeout_s, self.buffer_addresses)
            kind = pull_kind(source, self.direct_uploads and self.store.presigns)
            pull = kind(*args) if kind is BufferPull else kind(*args, self._pins)
            self.pulls.append(pull)
            pull.start()

    def _on_announcements(self, files: Iterable[checkpoint_pb2.FileAnnouncement]) -> None:
        """The header's files: names, sizes and (optional) sha256s."""
        for i, f in enumerate(files):
            check_file_name(f.name, f"files[{i}].name")
            if f.size < 0:
                raise InvalidArgument(f"files[{i}].size: must be zero or more, got {f.size}")
            if f.name in self.announced:
                raise InvalidArgument(f"files[{i}].name: {f.name!r} is announced twice")
            self.announced[f.name] = f.size
            if f.sha256:
                self.sha256s[f.name] = check_digest(f.sha256, f"files[{i}].sha256")

    def _grant_files(self) -> list[checkpoint_pb2.FileGrant]:
        """Presigned PUTs of the announced files with a sha256 and bytes, where allowed and possible.

        Each key joins the upload's keys before its URL exists: an abort deletes whatever was PUT.
        The URL expires after timeout_s; one used after an abort leaves staging for the sweep.
        """
        grants = []
        if not self.direct_uploads:
            return grants
        for name, sha256 in self.sha256s.items():
            size = self.announced[name]
            if size == 0:
                continue
            key = self.key.file_key(name)
            self._written_keys.append(key)
            grant = self.store.presign_put(key, size, sha256, self.timeout_s)
            # A file:// store, a file too big for one PUT, or a store the client may not dial: chunks.
            if grant is None or not presigned.reachable(grant, self.header.store_endpoints):
                self._written_keys.remove(key)
                continue
            self.granted[name] = (size, sha256)
            grants.append(checkpoint_pb2.FileGrant(name=name, url=grant.url, headers=dict(grant.headers)))
        return grants

    def _open(self, name: str) -> ObjectWriter:
        key = self.key.file_key(name)
        self._written_keys.append(key)
        return self.store.open_writer(key)

    def _on_chunk(self, chunk: checkpoint_pb2.FileChunk) -> None:
        name = chunk.file
        if self._current is None or self._current.name != name:
            if name not in self.announced:
                raise InvalidArgument(f"chunk.file: {name!r} was not announced in the header")
            if name in self.granted:
                raise InvalidArgument(f"chunk.file: {name!r} was granted a direct upload; PUT it to its URL "
                                      "instead of sending chunks")
            if name in self.written:
                raise InvalidArgument(f"chunk.file: {name!r} was already sent; send each file's chunks together")
            self._finish_file()
            self._current = Written(name)
            self._writer = self._open(name)
        current = self._current
        data = chunk.data  # each access to a bytes field makes a copy
        current.size += len(data)
        if current.size > self.announced[name]:
            raise InvalidArgument(f"chunk.file: {name!r} is longer than the {self.announced[name]} bytes announced")
        current.digest.update(data)
        self._writer.write(data)

    def _finish_file(self) -> None:
        if self._current is None:
            return
        self._writer.close()
        self.written[self._current.name] = self._current
        self._current, self._writer = None, None

    # -- commit / abort ------------------------------------------------------

    def _commit(self, commit: checkpoint_pb2.Commit) -> tuple[Manifest, list[Manifest]]:
        self._finish_file()
        self._check_files(commit)
        buffers = self._collect_pulls()
        header = self.header
        manifest = Manifest(
            agent_id=self.key.run.agent_id,
            run_id=self.key.run.run_id,
            step=self.key.step,
            episode=header.episode,
            created=now_rfc3339(),
            files=(*(FileEntry(w.name, w.size, w.digest.hexdigest()) for w in self.written.values()),
                   *(FileEntry(name, size, sha256) for name, (size, sha256) in self.granted.items())),
            metrics=dict(header.metrics),
            config=struct_to_dict(header.config),
            extra=struct_to_dict(header.extra),
            resumed_from=header.resumed_from,
            buffers=tuple(buffers),
            versions={**header.versions, "checkpoint_format": FORMAT},
        )
        with self.catalog.run_lock(self.key.run):
            self._check_blocks_present(manifest)
            if header.HasField("retention"):
                self.store.put(self.key.run.retention_key, RetentionPolicy.from_proto(header.retention).to_json())
                self.catalog.notify("run_changed", self.key.run)
            self.store.put(self.key.manifest_key, manifest.to_json())  # the commit point
            self.catalog.notify("committed", manifest)
            self._written_keys.clear()
            # The manifest references the blocks now; GC lists references afresh under this lock.
            self._pins.release(lock_held=True)
            self._count_bytes(manifest)
            log.info("committed %s (%d files, %.1f MiB)", self.key, len(manifest.files), manifest.total_bytes / 2**20)
            try:
                deleted = self.catalog.apply_retention(self.key.run)
            except RewindError as exc:
                # The checkpoint is committed; retention will run again after the next one.
                log.warning("retention for %s failed after commit: %s", self.key.run, exc)
                deleted = []
        return manifest, deleted

    def _check_blocks_present(self, manifest: Manifest) -> None:
        """Every block the manifest references is in the store, at its size (one listing; run lock held).

        Pins keep GC and the sweep away, but not someone deleting behind the service's back: a
        missing block fails the save, and the next save uploads it again.
        """
        needed = manifest.blocks
        if not needed:
            return
        stored = self.catalog.stored_blocks(self.key.run)
        for entry in manifest.buffers:
            for block in entry.blocks:
                obj = stored.get(block.sha256)
                if obj is None or obj.size != block.size:
                    found = "missing" if obj is None else f"{obj.size} bytes, not {block.size}"
                    raise FailedPrecondition(f"buffers: block {block.sha256} of buffer {entry.buffer!r} is {found} "
                                             f"in {self.store.location(self.key.run.blocks_prefix)} at the commit; "
                                             "nothing was saved, save again")

    def _count_bytes(self, manifest: Manifest) -> None:
        block_pulls = [p for p in self.pulls if isinstance(p, BlockPull)]
        self.uploaded_bytes = manifest.total_bytes + sum(p.uploaded for p in block_pulls)
        self.deduplicated_bytes = sum(p.deduplicated for p in block_pulls)

    def _check_files(self, commit: checkpoint_pb2.Commit) -> None:
        """Every announced file arrived whole (empty ones are written now) with the sha256 the commit (and
        its announcement, if it gave one) names; every granted file is in the store as announced."""
        for name, size in self.announced.items():
            if name in self.granted:
                continue
            if name not in self.written:
                if size:
                    raise InvalidArgument(f"commit: file {name!r} was announced but never sent")
                with self.store.open_writer(self.key.file_key(name)):  # an empty file
                    self._written_keys.append(self.key.file_key(name))
                self.written[name] = Written(name)
            elif self.written[name].size != size:
                raise InvalidArgument(f"commit: file {name!r} is {self.written[name].size} bytes, "
                                      f"not the {size} announced")
        self._check_digests(commit)
        self._check_granted()

    def _check_digests(self, commit: checkpoint_pb2.Commit) -> None:
        """The commit names every file's sha256: that of the bytes sent, and that of its announcement."""
        digests = {}
        for i, f in enumerate(commit.files):
            if f.name not in self.announced:
                raise InvalidArgument(f"commit.files[{i}].name: {f.name!r} was not announced")
            digests[f.name] = f.sha256.lower()
        for name in (*self.written, *self.granted):
            if name not in digests:
                raise InvalidArgument(f"commit.files: no sha256 for {name!r}; the commit must list every file")
        for name, written in self.written.items():
            got, expected = written.digest.hexdigest(), digests[name]
            if got != expected:
                raise InvalidArgument(f"commit.files: {name!r} arrived with sha256 {got[:12]}"
                                      f"..., not the {expected[:12]}... announced; it was damaged in transit")
            if got != self.sha256s.get(name, got):
                raise InvalidArgument(f"files: {name!r} arrived with sha256 {got[:12]}..., not the "
                                      f"{self.sha256s[name][:12]}... its announcement gave; nothing was saved")
        for name, (_, sha256) in self.granted.items():
            if digests[name] != sha256:
                raise InvalidArgument(f"commit.files: {name!r} has sha256 {digests[name][:12]}..., not the "
                                      f"{sha256[:12]}... its announcement gave and its upload was granted for")

    def _check_granted(self) -> None:
        """Each granted file is in the store at its announced size (and sha256, where the store reports one)."""
        for name, (size, sha256) in self.granted.items():
            try:
                stored_size, stored_sha256 = self.store.checksum_of(self.key.file_key(name))
            except ObjectMissing:
                raise FailedPrecondition(f"commit: file {name!r} was granted a direct upload but is not in the "
                                         "store (granted but not uploaded); nothing was saved") from None
            if stored_size != size:
                raise InvalidArgument(f"commit: file {name!r} is {stored_size} bytes in the store, not the "
                                      f"{size} announced; nothing was saved")
            if stored_sha256 is not None and stored_sha256 != sha256:
                raise DataLoss(f"commit: file {name!r} is in the store with sha256 {stored_sha256[:12]}..., not the "
                               f"{sha256[:12]}... announced; nothing was saved")

    def _collect_pulls(self) -> list[BufferEntry]:
        """Wait for every buffer snapshot; any failure is the upload's."""
        buffers = []
        for pull in self.pulls:
            pull.join(self.timeout_s)
            if pull.is_alive() and not pull.answered:
                raise unreachable(pull.field, pull.source.address)  # silence says no more than a refusal
            if pull.is_alive():
                raise FailedPrecondition(f"buffers: the snapshot of {pull.source.buffer!r} from "
                                         f"{pull.source.address} took longer than {self.timeout_s:.0f}s")
            if isinstance(pull.error, RewindError):
                raise pull_error(pull) from None
            if pull.error is not None:
                raise pull.error
            self.written[pull.file] = pull.written
            if isinstance(pull, BlockPull):
                buffers.append(BufferEntry(pull.source.buffer, pull.file, pull.source.address, pull.episodes_added,
                                           pull.versions, format="blocks", blocks=pull.blocks))
            else:
                buffers.append(BufferEntry(pull.source.buffer, pull.file, pull.source.address, pull.episodes_added,
                                           pull.versions))
        return buffers

    def _abort(self) -> None:
        for pull in self.pulls:
            pull.cancelled.set()
        if self._writer is not None:
            self._writer.abort()
        for pull in self.pulls:
            pull.join(5.0)
        try:
            if self._written_keys:
                self.store.delete(self._written_keys)
        except RewindError as exc:
            log.warning("could not remove the aborted upload of %s (%s); staging clean-up will", self.key, exc)
        finally:
            # Blocks are never deleted here (they may be shared); unpinned, unused ones are the sweep's.
            if self._pins is not None:
                self._pins.release()
            # Only now may another upload take the step: our deletes must not hit its files.
            self._release()


def _check_json_numbers(value: struct_pb2.Struct, field: str) -> None:
    """manifest.json is JSON, which has no NaN or infinity: refuse them before anything is written."""
    try:
        struct_to_dict(value)
    except ValueError:
        raise InvalidArgument(f"{field}: holds NaN or infinity, which JSON (manifest.json) cannot store; "
                              "send them as strings or leave them out") from None
