"""Buffer blocks shared by a run's checkpoints: GC that never loses a referenced block, whatever is
killed when; pins; the sweep of unused blocks; verification of shared blocks.

Checkpoints and blocks are written straight through the store (a manifest may reference blocks
without any buffer service), on file:// and on a real S3 server.
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from rewind.errors import DataLoss
from rewind_checkpoint import garbage
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.layout import CheckpointKey, RunKey
from rewind_checkpoint.manifest import BlockInfo, BufferEntry, FileEntry, Manifest
from rewind_checkpoint.metrics import stats_of
from rewind_checkpoint.retention import RetentionPolicy
from rewind_checkpoint.store import FileStore, open_store

AGE = 3600.0
RUN = RunKey("agent", "run-1")


class Killed(Exception):
    """Stands for the service being killed at that point: nothing after it runs."""


@pytest.fixture
def store(store_url):
    return open_store(store_url, timeout_s=2.0, retries=2, part_bytes=5 * 2**20)


@pytest.fixture
def clock():
    """The catalog's clock, which a test moves: [now]."""
    return [time.time()]


@pytest.fixture
def catalog(store, clock):
    return Catalog(store, staging_max_age_s=AGE, clock=lambda: clock[0])


def block(n: int) -> tuple[str, bytes]:
    """Block n: its sha256 and bytes (distinct sizes, so a wrong block never passes a size check)."""
    data = f"rows of block {n};".encode() * (n + 2)
    return hashlib.sha256(data).hexdigest(), data


def sha(n: int) -> str:
    return block(n)[0]


def put_blocks(store, *ns: int, run: RunKey = RUN) -> None:
    for n in ns:
        digest, data = block(n)
        store.put(run.block_key(digest), data)


def commit(store, step: int, ns: tuple[int, ...], run: RunKey = RUN) -> Manifest:
    """A committed "blocks" checkpoint of `run` at `step` needing blocks ns (written first, then the index, then
    the manifest, as a save does); commits are ordered by step."""
    put_blocks(store, *ns, run=run)
    key = CheckpointKey(run, step)
    index = f"index of step {step}".encode()
    store.put(key.file_key("buffer.snapshot"), index)
    entry = BufferEntry("buffer", "buffer.snapshot", "127.0.0.1:1", step, format="blocks",
                        blocks=tuple(BlockInfo(*_info(n)) for n in ns))
    manifest = Manifest(run.agent_id, run.run_id, step, step, f"2026-01-01T00:00:{step:02d}.000000Z",
                        (FileEntry("buffer.snapshot", len(index), hashlib.sha256(index).hexdigest()),),
                        buffers=(entry,))
    store.put(key.manifest_key, manifest.to_json())
    return manifest


def _info(n: int) -> tuple[str, int]:
    digest, data = block(n)
    return digest, len(data)


def stored(store) -> set[str]:
    """The run's blocks/ keys, relative to blocks/."""
    return {o.key[len(RUN.blocks_prefix):] for o in store.list(RUN.blocks_prefix)}


def shas(*ns: int) -> set[str]:
    return {sha(n) for n in ns}


def all_verify(catalog: Catalog, steps: list[int]) -> None:
    assert [m.step for m in catalog.manifests(RUN)] == steps
    for step in steps:
        catalog.lookup_exact(CheckpointKey(RUN, step))  # every file and block, sha256 included


def set_keep_last(catalog: Catalog, n: int) -> list[int]:
    catalog.set_retention(RUN, RetentionPolicy(keep_last=n))
    with catalog.run_lock(RUN):
        return [m.step for m in catalog.apply_retention(RUN)]


# -- GC -----------------------------------------------------------------------


def test_retention_deletes_a_block_only_when_no_committed_manifest_references_it(store, catalog):
    commit(store, 1, (0, 1))
    commit(store, 2, (0, 1, 2))
    commit(store, 3, (0, 2, 3))
    commit(store, 4, (0, 3, 4))
    put_blocks(store, 9)  # an orphan no deleted checkpoint needed: the sweep's, never GC's
    other = RunKey("agent", "run-2")
    commit(store, 1, (1,), run=other)  # the same block in another run is another object

    assert set_keep_last(catalog, 2) == [1, 2]
    assert stored(store) == shas(0, 2, 3, 4, 9)  # 1 went with the last checkpoint that needed it
    all_verify(catalog, [3, 4])
    assert store.get(other.block_key(sha(1))) == block(1)[1]

    catalog.delete(CheckpointKey(RUN, 3))
    assert stored(store) == shas(0, 3, 4, 9)
    all_verify(catalog, [4])
    assert stats_of(catalog).blocks_deleted._value.get() == 2


@pytest.mark.parametrize("how", ["retention", "delete"])
@pytest.mark.parametrize("killed_after", ["the manifest delete", "the first block batch"])
def test_gc_killed_mid_deletion_never_loses_a_referenced_block(store, catalog, clock, monkeypatch, how, killed_after):
    commit(store, 1, (0, 1, 5))  # the only checkpoint needing 1 and 5
    commit(store, 2, (0, 2))
    commit(store, 3, (2, 3))
    monkeypatch.setattr(garbage, "BLOCK_DELETE_BATCH", 1)
    real_delete, calls = store.delete, []

    def dying_delete(keys: list[str]) -> None:
        real_delete(keys)
        calls.append(keys)
        manifest = killed_after == "the manifest delete" and keys[0].endswith("manifest.json")
        if manifest or (killed_after == "the first block batch" and "/blocks/" in keys[0]):
            raise Killed

    monkeypatch.setattr(store, "delete", dying_delete)
    with pytest.raises(Killed):
        if how == "retention":
            set_keep_last(catalog, 2)
        else:
            catalog.delete(CheckpointKey(RUN, 1))
    monkeypatch.setattr(store, "delete", real_delete)

    all_verify(catalog, [2, 3])  # every committed checkpoint is whole
    first_batch = {min(sha(1), sha(5))}  # GC deletes in key order
    assert stored(store) == shas(0, 1, 2, 3, 5) - (set() if killed_after == "the manifest delete" else first_batch)
    assert catalog.clean_staging() == 0  # the orphans are young: a save may be about to use them
    clock[0] = max(o.modified for o in store.list(RUN.prefix)) + AGE
    removed = catalog.clean_staging()
    assert stored(store) == shas(0, 2, 3)
    assert not store.list(CheckpointKey(RUN, 1).prefix)  # the deleted step's files are gone too
    assert removed == (3 if killed_after == "the manifest delete" else 1)  # its index, 1 and 5; or the other block
    all_verify(catalog, [2, 3])


def test_a_pinned_block_survives_gc_and_the_sweep(store, catalog, clock):
    """A save racing a delete: the save found block 1 present and pinned it, then the only checkpoint
    referencing it is deleted, then the save commits a manifest that needs it."""
    commit(store, 1, (0, 1))
    commit(store, 2, (0,))
    catalog.pin(RUN, [sha(1)])
    catalog.pin(RUN, [sha(1)])  # two uploads rely on it
    catalog.delete(CheckpointKey(RUN, 1))
    clock[0] += 2 * AGE
    catalog.clean_staging()
    assert stored(store) == shas(0, 1)
    catalog.unpin(RUN, [sha(1)])
    catalog.clean_staging()
    assert stored(store) == shas(0, 1) and catalog.pinned(RUN) == shas(1)

    commit(store, 3, (1,))  # the second upload commits, then unpins
    catalog.unpin(RUN, [sha(1)])
    assert catalog.pinned(RUN) == set()
    assert catalog.clean_staging() == 0
    all_verify(catalog, [2, 3])
    catalog.delete(CheckpointKey(RUN, 3))
    assert stored(store) == shas(0)


def test_an_unreadable_manifest_stops_block_gc(store, catalog, clock):
    commit(store, 1, (0, 1))
    commit(store, 2, (0, 2))
    commit(store, 3, (3,))
    good = store.get(CheckpointKey(RUN, 2).manifest_key)
    store.put(CheckpointKey(RUN, 2).manifest_key, b"{ torn")

    catalog.delete(CheckpointKey(RUN, 1))
    assert stored(store) == shas(0, 1, 2, 3)  # nobody can tell whether step 2 needs block 1
    clock[0] += 2 * AGE
    assert catalog.clean_staging() == 0
    assert stored(store) == shas(0, 1, 2, 3)

    # A key this release does not know is no reason to stop: manifests are read field by field.
    store.put(CheckpointKey(RUN, 2).manifest_key, good.replace(b'"format": "blocks"',
                                                               b'"format": "blocks", "compression": "zstd"'))
    assert catalog.clean_staging() == 1
    assert stored(store) == shas(0, 2, 3)
    all_verify(catalog, [2, 3])


# -- the sweep ------------------------------------------------------------------


def _begin(s3_client, bucket: str, key: str) -> str:
    """A multipart upload with one part, never finished: what a service killed mid-block leaves."""
    upload_id = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3_client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=b"part of a block")
    return upload_id


def test_the_sweep_removes_unreferenced_blocks_only_after_the_staging_age(store, catalog, clock):
    commit(store, 1, (0,))
    put_blocks(store, 1, 2)  # 1: an orphan (an aborted save's); 2: an orphan a save in progress relies on
    catalog.pin(RUN, [sha(2)])
    store.put(f"{RUN.blocks_prefix}README", b"not ours")
    store.put(f"{RUN.blocks_prefix}sub/{sha(7)}", b"not ours either")
    temps = set()
    if isinstance(store, FileStore):  # what a crashed block write leaves: _FileWriter's temp name
        for n in (3, 2):
            temp = f".{sha(n)}.0123abcd.part"
            store.path_of(RUN.blocks_prefix + temp).write_bytes(b"half a block")
            temps.add(temp)
    modified = [o.modified for o in store.list(RUN.prefix)]

    clock[0] = min(modified) + AGE - 1
    assert catalog.clean_staging() == 0
    clock[0] = max(modified) + AGE
    assert catalog.clean_staging() == (2 if temps else 1)
    not_ours = {"README", f"sub/{sha(7)}"}
    assert stored(store) == shas(0, 2) | not_ours | {t for t in temps if sha(2) in t}
    assert stats_of(catalog).blocks_swept._value.get() == 1
    catalog.unpin(RUN, [sha(2)])
    assert catalog.clean_staging() == (2 if temps else 1)
    assert stored(store) == shas(0) | not_ours
    all_verify(catalog, [1])


def test_the_sweep_aborts_stale_multipart_uploads_of_blocks_unless_pinned(s3, clock):
    bucket, client = s3.create_bucket(), s3.client()
    store = open_store(f"s3://{bucket}/rewind", timeout_s=2.0, retries=2)
    catalog = Catalog(store, staging_max_age_s=AGE, clock=lambda: clock[0])
    keys = {n: f"rewind/{RUN.block_key(sha(n))}" for n in (1, 2)}
    for key in (*keys.values(), f"rewind/{RUN.blocks_prefix}README"):
        _begin(client, bucket, key)
    catalog.pin(RUN, [sha(2)])  # its write is in progress
    # moto reports one fixed Initiated time for every upload, so the clock is set from it.
    [begun] = {u.initiated for u in store.pending_uploads("")}

    clock[0] = begun + AGE - 1
    assert catalog.clean_staging() == 0
    clock[0] = begun + AGE
    assert catalog.clean_staging() == 1
    pending = {u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert pending == {keys[2], f"rewind/{RUN.blocks_prefix}README"}


def test_the_sweep_never_deletes_through_a_link_in_blocks(tmp_path):
    root, outside = tmp_path / "store", tmp_path / "zz-elsewhere"
    outside.mkdir()
    (outside / "victim").write_bytes(b"not the store's")
    store = FileStore(root)
    commit(store, 1, (0,))
    blocks = root / "agent" / "run-1" / "blocks"
    (blocks / sha(5)).symlink_to(outside / "victim")
    (blocks / f".{sha(6)}.0123abcd.part").symlink_to(outside / "victim")
    (root / "agent" / "run-2").mkdir()
    (root / "agent" / "run-2" / "blocks").symlink_to(outside, target_is_directory=True)
    catalog = Catalog(store, staging_max_age_s=0, clock=lambda: time.time() + 7200)

    assert catalog.clean_staging() == 0
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"not the store's"
    assert (blocks / sha(5)).is_symlink() and os.path.exists(blocks / sha(0))


# -- verification of shared blocks -----------------------------------------------


def test_a_corrupt_shared_block_fails_every_checkpoint_needing_it_and_latest_falls_back(store, catalog,
                                                                                       monkeypatch):
    commit(store, 1, (0,))
    for step in (2, 3, 4):
        commit(store, step, (0, 1))
    reads, real_read = [], store.read
    monkeypatch.setattr(store, "read", lambda key, *a: (reads.append(key), real_read(key, *a))[1])
    for step in (2, 3, 4):
        catalog.lookup_exact(CheckpointKey(RUN, step))
    assert reads.count(RUN.block_key(sha(1))) == 1  # a shared block is hashed once per stored version

    data = bytearray(block(1)[1])
    data[len(data) // 2] ^= 0xFF
    store.put(RUN.block_key(sha(1)), bytes(data))  # same size: only the sha256 tells
    for step in (2, 3, 4):
        with pytest.raises(DataLoss, match=rf"block {sha(1)}.*step-000000000{step} needs.*sha256"):
            catalog.lookup_exact(CheckpointKey(RUN, step))
    found = catalog.lookup_latest(RUN)
    assert found.manifest.step == 1
    assert [p.rsplit("/", 1)[1] for p, _ in found.skipped] == ["step-0000000004", "step-0000000003",
                                                                "step-0000000002"]
    assert all(sha(1) in reason for _, reason in found.skipped)
    assert catalog.lookup_latest(RUN, verify=False).manifest.step == 4  # sizes still match


def test_a_missing_block_is_data_loss(store, catalog):
    m1 = commit(store, 1, (0,))
    m2 = commit(store, 2, (0, 1))
    store.delete([RUN.block_key(sha(1))])
    with pytest.raises(DataLoss, match=rf"block {sha(1)}.*step-0000000002 needs, is missing"):
        catalog.lookup_exact(CheckpointKey(RUN, 2), verify=False)  # found by listing, nothing read
    with pytest.raises(DataLoss, match=rf"block {sha(1)}.*is missing"):
        list(catalog.read_block(m2, m2.buffers[0].blocks[1]))
    assert catalog.lookup_latest(RUN).manifest == m1

    store.put(RUN.block_key(sha(0)), block(0)[1][:-1])  # truncated
    with pytest.raises(DataLoss, match=rf"block {sha(0)}.*is {len(block(0)[1]) - 1} bytes"):
        catalog.lookup_exact(CheckpointKey(RUN, 1), verify=False)
    with pytest.raises(DataLoss, match=rf"block {sha(0)}.*truncated"):
        list(catalog.read_block(m1, m1.buffers[0].blocks[0]))


def test_stored_blocks_lists_well_formed_names_only(store, catalog):
    put_blocks(store, 0, 1)
    store.put(f"{RUN.blocks_prefix}README", b"x")
    store.put(f"{RUN.blocks_prefix}{sha(2).upper()}", b"x")
    assert {k: o.size for k, o in catalog.stored_blocks(RUN).items()} == dict(map(_info, (0, 1)))
    assert catalog.manifests(RUN) == [] and catalog.run_keys() == [RUN]
