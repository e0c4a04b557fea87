"""Buffer pulls: one checkpoint file's bytes taken from a buffer service while an upload runs.

An upload (upload.py) starts one pull per buffer as soon as its header arrives, each in a background
thread, so the snapshots reflect the moment of the save; the commit collects them.

A buffer saved as blocks (BufferSource.blocks) is pulled with SnapshotBlocks:
the service tells the buffer which blocks the run's store holds, writes the
ones it lacks to <agent>/<run>/blocks/<sha256> (each checked against its name
before it becomes visible), and the index to the step folder like any file.
The blocks it relies on are pinned (reservations.UploadPins) from before it lists or
writes them until the manifest is committed or the upload aborted, so GC and
the sweep leave them alone. An abort never deletes a block: another upload or
a committed checkpoint may share it; unused ones are the sweep's. Where the store
presigns and direct uploads are on, the buffer service PUTs the new blocks itself
(UploadBlocks) and the service only checks them in the store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field

from rewind import versions as version_records
from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_client import BufferClient
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import DataLoss, FailedPrecondition, RewindError
from rewind_checkpoint.dials import check_dial, dial_failure
from rewind_checkpoint.layout import check_digest
from rewind_checkpoint.manifest import BlockInfo
from rewind_checkpoint.reservations import UploadPins
from rewind_checkpoint.store import ObjectMissing, ObjectWriter

log = logging.getLogger(__name__)


@dataclass
class Written:
    """A file as it arrives: its name, the bytes so far, and their running sha256."""

    name: str
    size: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class BufferPull(threading.Thread):
    """Streams one buffer's snapshot from the buffer service into a store object.

    Args:
        source: the header's BufferSource.
        field: the request field of its address (buffers[i].address), for errors.
        file: the checkpoint file it becomes.
        writer: where the bytes go.
        timeout_s: deadline of the snapshot call.
        allowed: the service's buffer_addresses setting.
    """

    def __init__(self, source: checkpoint_pb2.BufferSource, field: str, file: str, writer: ObjectWriter,
                 timeout_s: float, allowed: tuple[str, ...]) -> None:
        super().__init__(name=f"rewind-pull-{source.buffer}", daemon=True)
        self.source = source
        self.field = field
        self.file = file
        self.writer = writer
        self.timeout_s = timeout_s
        self.allowed = allowed
        self.written = Written(file)
        self.episodes_added = 0
        self.versions: dict[str, str] = {}  # the buffer service's, from the first response
        self.answered = False  # a response arrived: the address is a buffer service, its errors may be told
        self.error: BaseException | None = None
        self.cancelled = threading.Event()

    def run(self) -> None:
        try:
            check_dial(self.source.address, self.allowed, self.field)  # no connection to an address not allowed
            with BufferClient(self.source.address, self.source.buffer, timeout=self.timeout_s) as client:
                for response in client.snapshot_stream(self.source.expect_episodes_added, timeout=self.timeout_s,
                                                       capture_id=self.source.capture_id):
                    if not self.answered:
                        self.versions = _buffer_versions(response.versions, self.source)
                    self.answered = True
                    if self.cancelled.is_set():
                        self.writer.abort()
                        return
                    self.written.digest.update(response.chunk)
                    self.written.size += len(response.chunk)
                    self.episodes_added = response.episodes_added
                    self.writer.write(response.chunk)
                self.writer.close()
        except BaseException as exc:
            self.error = exc
            self.writer.abort()


class BlockPull(BufferPull):
    """Streams one buffer as blocks (SnapshotBlocks): new blocks into the run's blocks/, the index into
    the checkpoint file; checks every block against its name and the index's list.

    Args:
        as BufferPull, and
        pins: the upload's block pins.
    """

    def __init__(self, source: checkpoint_pb2.BufferSource, field: str, file: str, writer: ObjectWriter,
                 timeout_s: float, allowed: tuple[str, ...], pins: UploadPins) -> None:
        super().__init__(source, field, file, writer, timeout_s, allowed)
        self.pins = pins
        self.blocks: tuple[BlockInfo, ...] = ()  # the index's list, once it arrived
        self.uploaded = 0       # bytes of the blocks written
        self.deduplicated = 0   # bytes of the index's blocks the store already held
        self._present: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._block: tuple[BlockInfo, ObjectWriter, Written] | None = None
        self._index_size: int | None = None

    def run(self) -> None:
        try:
            check_dial(self.source.address, self.allowed, self.field)  # no connection to an address not allowed
            self._present = self.pins.present()
            with BufferClient(self.source.address, self.source.buffer, timeout=self.timeout_s) as client:
                for response in self._stream(client):
                    self.answered = True
                    if self.cancelled.is_set():
                        self._abort_block()
                        self.writer.abort()
                        return
                    self._on_response(response)
            self._finish()
            self.writer.close()
        except BaseException as exc:
            self.error = exc
            self._abort_block()
            self.writer.abort()

    def _stream(self, client: BufferClient):
        return client.snapshot_blocks(list(self._present), capture_id=self.source.capture_id,
                                      expect_episodes_added=self.source.expect_episodes_added, timeout=self.timeout_s)

    def _on_response(self, response) -> None:
        kind = response.WhichOneof("item")
        if kind == "chunk":
            self._on_chunk(response.chunk)
        elif kind == "block":
            self._close_block()
            if self._index_size is not None:
                raise DataLoss("the buffer service sent a block after the index")
            self._open_block(response.block)
        elif kind == "index":
            self._close_block()
            if self._index_size is not None:
                raise DataLoss("the buffer service sent a second index")
            self._on_index(response.index)
        else:
            raise DataLoss("the buffer service sent an empty SnapshotBlocksResponse")

    def _open_block(self, ref) -> None:
        sha256 = check_digest(ref.sha256, "block.sha256", DataLoss)
        if ref.size < 0:
            raise DataLoss(f"block {sha256}: size {ref.size} is negative")
        if sha256 in self._sent or sha256 in self._present:
            raise DataLoss(f"block {sha256} was sent although the store holds it or it was sent before")
        self.pins.add(sha256)  # before the first byte: from now on GC and the sweep leave it alone
        key = self.pins.run.block_key(sha256)
        self._block = (BlockInfo(sha256, ref.size), self.pins.catalog.store.open_writer(key), Written(sha256))
        self._sent[sha256] = ref.size

    def _on_chunk(self, data: bytes) -> None:
        if self._block is not None:
            block, writer, written = self._block
            written.size += len(data)
            if written.size > block.size:
                raise DataLoss(f"block {block.sha256} is longer than the {block.size} bytes announced")
            written.digest.update(data)
            writer.write(data)
        elif self._index_size is not None:
            self.written.size += len(data)
            if self.written.size > self._index_size:
                raise DataLoss(f"the index is longer than the {self._index_size} bytes announced")
            self.written.digest.update(data)
            self.writer.write(data)
        else:
            raise DataLoss("the buffer service sent a chunk before any block or index")

    def _close_block(self) -> None:
        """Finish the open block; it becomes visible under its name only if its bytes match it."""
        if self._block is None:
            return
        block, writer, written = self._block
        if written.size != block.size or written.digest.hexdigest() != block.sha256:
            raise DataLoss(f"block {block.sha256} arrived as {written.size} bytes with sha256 "
                           f"{written.digest.hexdigest()[:12]}..., not the {block.size} bytes it names")
        self._block = None
        writer.close()
        self.uploaded += block.size

    def _abort_block(self) -> None:
        if self._block is not None:
            self._block[1].abort()
            self._block = None

    def _on_index(self, index) -> None:
        blocks = []
        for i, ref in enumerate(index.blocks):
            sha256 = check_digest(ref.sha256, f"index.blocks[{i}].sha256", DataLoss)
            if ref.size < 0:
                raise DataLoss(f"index.blocks[{i}].size: {ref.size} is negative")
            blocks.append(BlockInfo(sha256, ref.size))
        if len({b.sha256 for b in blocks}) != len(blocks):
            raise DataLoss("index.blocks: names a block twice")
        if index.size < 0:
            raise DataLoss(f"index.size: {index.size} is negative")
        self.blocks = tuple(blocks)
        self._index_size = index.size
        self.episodes_added = index.episodes_added
        self.versions = _buffer_versions(index.versions, self.source)

    def _finish(self) -> None:
        """The stream ended: it must have carried the whole index, and exactly the blocks the store lacked."""
        self._close_block()
        if self._index_size is None:
            raise DataLoss("the stream ended without an index")
        if self.written.size != self._index_size:
            raise DataLoss(f"the index is {self.written.size} bytes, not the {self._index_size} announced")
        needed = {b.sha256: b.size for b in self.blocks}
        for sha256, size in self._sent.items():
            if needed.get(sha256) != size:
                raise DataLoss(f"block {sha256} ({size} bytes) was sent but the index does not name it so")
        for block in self.blocks:
            if block.sha256 in self._present:
                if self._present[block.sha256] != block.size:
                    raise DataLoss(f"index: block {block.sha256} is {block.size} bytes, but the store's is "
                                   f"{self._present[block.sha256]}")
                self.deduplicated += block.size
            elif block.sha256 not in self._sent:
                raise DataLoss(f"index: block {block.sha256} is neither in the store nor sent")


class DirectBlockPull(BlockPull):
    """A BlockPull whose new blocks go from the buffer service straight to the store (UploadBlocks).

    The service pins each block the buffer names and grants it one presigned PUT
    of that key, size and sha256; it never sees the bytes. Before the commit it
    checks each reported block in the store: its size, and its sha256 where the
    store keeps one (S3 checks the signed x-amz-checksum-sha256 header against
    the body itself).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reported: set[str] = set()

    def _stream(self, client: BufferClient):
        return client.upload_blocks(list(self._present), self._grant, capture_id=self.source.capture_id,
                                    expect_episodes_added=self.source.expect_episodes_added, timeout=self.timeout_s)

    def _on_response(self, response) -> None:
        kind = response.WhichOneof("item")
        if kind == "uploaded":
            self._on_uploaded(response.uploaded)
        elif kind == "chunk":
            self._on_chunk(response.chunk)
        elif kind == "index":
            if self._index_size is not None:
                raise DataLoss("the buffer service sent a second index")
            self._on_index(response.index)
        elif kind != "needed":  # the client's grant callback took it
            raise DataLoss("the buffer service sent an empty UploadBlocksResponse")

    def _grant(self, needed) -> list:
        """One presigned PUT per block the buffer names; each pinned before its URL exists."""
        if self._sent:
            raise DataLoss("the buffer service named the needed blocks twice")
        grants = []
        for i, ref in enumerate(needed):
            sha256 = check_digest(ref.sha256, f"needed.blocks[{i}].sha256", DataLoss)
            if ref.size < 0:
                raise DataLoss(f"needed.blocks[{i}].size: {ref.size} is negative")
            if sha256 in self._sent or sha256 in self._present:
                raise DataLoss(f"needed.blocks[{i}]: block {sha256} is named twice, or the store holds it")
            self.pins.add(sha256)  # before the URL: from now on GC and the sweep leave the key alone
            self._sent[sha256] = ref.size
            grant = self.pins.catalog.store.presign_put(self.pins.run.block_key(sha256), ref.size, sha256,
                                                        self.timeout_s)
            if grant is None:
                raise FailedPrecondition(f"the store cannot presign block {sha256} ({ref.size} bytes)")
            grants.append(buffer_pb2.BlockGrant(sha256=sha256, url=grant.url, headers=dict(grant.headers)))
        return grants

    def _on_uploaded(self, ref) -> None:
        """The buffer says a block is in the store: check it is, at its size and (where kept) its sha256."""
        sha256 = check_digest(ref.sha256, "uploaded.sha256", DataLoss)
        if sha256 not in self._sent or sha256 in self._reported:
            raise DataLoss(f"uploaded: block {sha256} was not granted, or was reported twice")
        try:
            size, digest = self.pins.catalog.store.checksum_of(self.pins.run.block_key(sha256))
        except ObjectMissing:
            raise DataLoss(f"uploaded: block {sha256} is not in the store; nothing was saved, save again") from None
        if size != self._sent[sha256] or (digest is not None and digest != sha256):
            raise DataLoss(f"block {sha256} is in the store as {size} bytes with sha256 "
                           f"{(digest or 'unknown')[:12]}..., not the {self._sent[sha256]} bytes it names")
        self._reported.add(sha256)
        self.uploaded += size

    def _finish(self) -> None:
        unreported = sorted(set(self._sent) - self._reported)
        if unreported:
            raise DataLoss(f"block {unreported[0]} was granted but never reported uploaded "
                           f"({len(unreported)} blocks)")
        super()._finish()


def pull_kind(source: checkpoint_pb2.BufferSource, direct: bool) -> type[BufferPull]:
    """How a buffer is pulled: whole, as blocks through this service, or as blocks straight to the store."""
    if not source.blocks:
        return BufferPull
    return DirectBlockPull if direct else BlockPull


def pull_error(pull: BufferPull) -> RewindError:
    """A failed pull's error for the caller: the buffer service's own, naming the buffer, or "not reachable"."""
    error = pull.error
    if not (pull.answered or error.reason):
        # No Rewind service chose this status and nothing came back, so nothing shows
        # the address is a buffer service: why the dial failed is not the caller's to learn.
        return dial_failure(error, pull.source.address, pull.field)
    where = f"buffers: {pull.source.buffer!r} at {pull.source.address}"
    return type(error)(f"{where}: {error.message}", error.reason)


def _buffer_versions(versions, source: checkpoint_pb2.BufferSource) -> dict[str, str]:
    """The versions a buffer service sent with its snapshot, as the manifest records them.

    Entries this release does not know (a newer buffer service's) or cannot
    store are left out, with a warning: they must not fail the checkpoint.
    """
    kept = {}
    for key, value in versions.items():
        try:
            kept.update(version_records.check({key: value}, "versions"))
        except ValueError as exc:
            log.warning("buffer %r at %s: left out of the manifest: %s", source.buffer, source.address, exc)
    return kept

