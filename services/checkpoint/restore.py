"""RestoreBuffers: push a checkpoint's buffer snapshots straight into buffer services.

On a store that presigns (S3, with direct_uploads on), a "blocks" snapshot's
blocks do not pass through this service: each block message carries a
presigned GET, and the buffer service downloads the block itself (from a host
its store_endpoints allows) and checks it against its name, as it checks
streamed bytes. The index still comes through here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_client import BufferClient
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import InvalidArgument, NotFound, RewindError
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.dials import DEFAULT_BUFFER_ADDRESSES, check_dial, dial_failure
from rewind_checkpoint.layout import check_file_name, check_id
from rewind_checkpoint.manifest import BufferEntry, Manifest


def _targets(manifest: Manifest, targets: Sequence[checkpoint_pb2.BufferTarget],
             allowed: tuple[str, ...]) -> list[tuple[str, checkpoint_pb2.BufferTarget]]:
    """Fill defaults and check every target before any is restored: (the field its address came from, target).

    No targets means every recorded buffer, back where it came from. Every
    address is checked against the allow-list here, so a refused one leaves
    every buffer as it was.
    """
    recorded = {b.buffer: b for b in manifest.buffers}
    if not targets:
        if not recorded:
            raise NotFound(f"targets: {manifest.key} holds no buffer snapshots")
        # Keyed by where it came from: the shards of one buffer (same name, other services) all go back.
        sources = {(b.address, b.buffer): b for b in manifest.buffers}
        defaults = []
        for i, b in enumerate(manifest.buffers):
            if sources[(b.address, b.buffer)] is not b:
                continue  # a buffer recorded twice goes back once, as before
            # A recorded address was allowed when it was saved; the setting may have changed since.
            field = f"targets: the checkpoint's buffers[{i}].address"
            check_dial(b.address, allowed, field)
            defaults.append((field, checkpoint_pb2.BufferTarget(address=b.address, buffer=b.buffer, file=b.file)))
        return defaults
    filled = []
    for i, t in enumerate(targets):
        if not t.address:
            raise InvalidArgument(f"targets[{i}].address: is empty; give the buffer service's host:port")
        check_dial(t.address, allowed, f"targets[{i}].address")
        check_id(t.buffer, f"targets[{i}].buffer")
        file = t.file or (recorded[t.buffer].file if t.buffer in recorded else "")
        if not file:
            names = ", ".join(recorded) or "none"
            raise NotFound(f"targets[{i}].file: {manifest.key} has no snapshot of buffer {t.buffer!r} "
                           f"(buffers: {names}); name the file")
        check_file_name(file, f"targets[{i}].file")
        if manifest.file(file) is None:
            raise NotFound(f"targets[{i}].file: {manifest.key} has no file {file!r}")
        filled.append((f"targets[{i}].address", checkpoint_pb2.BufferTarget(address=t.address, buffer=t.buffer,
                                                                            file=file)))
    return filled


def _recording(chunks: Iterator[bytes], failure: list[RewindError]) -> Iterator[bytes]:
    """Pass chunks through; keep the error that stops them, since the call only reports CANCELLED."""
    try:
        yield from chunks
    except RewindError as exc:
        failure.append(exc)
        raise


def _blocks(catalog: Catalog, manifest: Manifest, entry: BufferEntry,
            failure: list[RewindError]) -> Iterator[tuple[str, int, Iterator[bytes]]]:
    """A "blocks" snapshot's blocks, in the index's order, each read (and verified) as it is sent."""
    for block in entry.blocks:
        yield block.sha256, block.size, _recording(catalog.read_block(manifest, block), failure)


def _block_grants(catalog: Catalog, manifest: Manifest, entry: BufferEntry,
                  timeout_s: float) -> Iterator[tuple[str, int, buffer_pb2.BlockGrant]]:
    """The same blocks as presigned GETs: the buffer service downloads each itself and checks its sha256."""
    run = manifest.key.run
    for block in entry.blocks:
        grant = catalog.store.presign_get(run.block_key(block.sha256), timeout_s)
        yield block.sha256, block.size, buffer_pb2.BlockGrant(url=grant.url, headers=dict(grant.headers))


def restore_buffers(catalog: Catalog, manifest: Manifest, targets: Sequence[checkpoint_pb2.BufferTarget],
                    timeout_s: float, buffer_addresses: tuple[str, ...] = DEFAULT_BUFFER_ADDRESSES,
                    direct: bool = False, generation: int = 0) -> list[checkpoint_pb2.RestoredBuffer]:
    """Stream each snapshot file into its buffer service, in order; a "blocks" snapshot goes as its
    index, then each block it needs (read from the run's blocks/, checked against its name).

    Args:
        catalog: the store the checkpoint is in.
        manifest: the checkpoint.
        targets: where each snapshot goes (none: every recorded buffer, where it came from).
        timeout_s: deadline of each restore call.
        buffer_addresses: the buffer services it may dial (see dials.py).
        direct: where the store presigns (S3), let each buffer service download its blocks itself.
        generation: the run generation the restored buffers start (0: each snapshot's own).

    Raises:
        PermissionDenied: an address outside buffer_addresses (nothing is restored).
        DataLoss: a snapshot, index or block failed its sha256 or is missing, naming it (that
            buffer is left as it was).
        Unavailable: a buffer service or the store is down.
    """
    if generation < 0:
        raise InvalidArgument(f"generation: {generation} is negative; give a run generation (1 or more), or 0 to "
                              "keep each snapshot's")
    restored = []
    for field, target in _targets(manifest, targets, buffer_addresses):
        failure: list[RewindError] = []
        check_dial(target.address, buffer_addresses, field)  # no connection to an address not allowed
        entry = next((b for b in manifest.buffers if b.file == target.file), None)
        with BufferClient(target.address, target.buffer, timeout=timeout_s) as client:
            try:
                # The snapshot file: the whole snapshot, or (blocks) the index its blocks follow.
                chunks = _recording(catalog.read_file(manifest, target.file), failure)
                if entry is not None and entry.format == "blocks":
                    blocks = (_block_grants(catalog, manifest, entry, timeout_s) if direct and catalog.store.presigns
                              else _blocks(catalog, manifest, entry, failure))
                    stats = client.restore_blocks(chunks, blocks, timeout=timeout_s, generation=generation)
                else:
                    stats = client.restore(chunks, timeout=timeout_s, generation=generation)
            except RewindError as exc:
                raise (failure[0] if failure else dial_failure(exc, target.address, field)) from None
        restored.append(checkpoint_pb2.RestoredBuffer(
            address=target.address, buffer=target.buffer, file=target.file, episodes=stats.episodes,
            transitions=stats.transitions, episodes_added=stats.episodes_added))
    return restored
