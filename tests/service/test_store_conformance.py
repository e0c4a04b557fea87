"""The store conformance suite: the contract of rewind_checkpoint.store_protocol.Store, with real values.

Every test runs on every backend in BACKENDS below: a directory (file://) and a real S3-protocol server
(moto). A new backend is one module (services/checkpoint/store_<name>.py: a Store subclass, named in
store.BACKENDS under its URL scheme) plus one entry here; test_every_store_class_runs_this_suite fails
until it has one.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import pkgutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import rewind_checkpoint
from rewind import presigned
from rewind.errors import NotFound, StoreUnavailable
from rewind_checkpoint import store as store_module
from rewind_checkpoint.store import FileStore, ObjectMissing, S3Store, Store, open_store

MiB = 2**20
PART_BYTES = 5 * MiB  # the smallest part S3 takes: large objects go up in several


@dataclass(frozen=True)
class Backend:
    """How the suite runs one backend.

    Attributes:
        cls: its Store subclass.
        url: the URL of a fresh, empty store, given the test's request (for fixtures) and tmp_path.
        outage: a context manager during which the store cannot be reached, and after which it can,
            with its contents intact.
        presigns: whether it hands out presigned URLs (Store.presigns).
        multipart: whether a write past one part is a multipart upload until it is closed or aborted.
    """

    cls: type[Store]
    url: Callable[[pytest.FixtureRequest, Path], str]
    outage: Callable[[pytest.FixtureRequest, Store], AbstractContextManager]
    presigns: bool
    multipart: bool


def _file_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"file://{tmp_path}/store"


@contextmanager
def _file_outage(request: pytest.FixtureRequest, store: Store) -> Iterator[None]:
    """The directory disappears, as an unmounted disk does."""
    away = store.root.with_name(f"{store.root.name}-away")
    store.root.rename(away)
    try:
        yield
    finally:
        away.rename(store.root)


def _s3_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return f"s3://{request.getfixturevalue('s3').create_bucket()}/rewind"


@contextmanager
def _s3_outage(request: pytest.FixtureRequest, store: Store) -> Iterator[None]:
    """The server hangs (SIGSTOP) and comes back (SIGCONT)."""
    server = request.getfixturevalue("s3")
    server.pause()
    try:
        yield
    finally:
        server.resume()


BACKENDS: dict[str, Backend] = {
    "file": Backend(FileStore, _file_url, _file_outage, presigns=False, multipart=False),
    "s3": Backend(S3Store, _s3_url, _s3_outage, presigns=True, multipart=True),
}


def open_test_store(url: str, timeout_s: float = 2.0, retries: int = 2) -> Store:
    return open_store(url, timeout_s=timeout_s, retries=retries, part_bytes=PART_BYTES)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def store_url(backend, request, tmp_path) -> str:
    return backend.url(request, tmp_path)


@pytest.fixture
def store(store_url) -> Store:
    return open_test_store(store_url)


def keys(store: Store, prefix: str = "") -> list[str]:
    return [o.key for o in store.list(prefix)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the suite covers every backend ----------------------------------------------------------------------


def _store_classes() -> set[type[Store]]:
    """Every concrete Store subclass in rewind_checkpoint (each of its modules imported first)."""
    for module in pkgutil.walk_packages(rewind_checkpoint.__path__, "rewind_checkpoint."):
        importlib.import_module(module.name)
    found, todo = set(), [Store]
    while todo:
        for cls in todo.pop().__subclasses__():
            todo.append(cls)
            if not inspect.isabstract(cls) and cls.__module__.startswith("rewind_checkpoint."):
                found.add(cls)
    return found


def test_every_store_class_runs_this_suite():
    covered = {b.cls for b in BACKENDS.values()}
    assert _store_classes() == covered, "a Store subclass without an entry in this suite's BACKENDS"
    assert set(store_module.BACKENDS.values()) == covered, "a backend open_store cannot open, or one untested"


def test_a_backend_opens_from_its_url_and_says_what_it_can(backend, store_url, store):
    assert type(store) is backend.cls
    assert store.url == store_url
    assert open_test_store(store.url).url == store.url
    store.check()
    assert store.presigns is backend.presigns
    assert store.location("") == store.url
    assert store.location("a/b.bin") == f"{store.url}/a/b.bin"


# -- writing and reading ---------------------------------------------------------------------------------


def test_put_get_list_delete(store):
    store.put("a/r/x.bin", b"hello")
    store.put("a/r/sub/y.bin", b"")
    store.put("a/q/z.bin", b"zz")
    assert store.get("a/r/x.bin") == b"hello"
    assert store.get("a/r/sub/y.bin") == b""
    assert [(o.key, o.size) for o in store.list("a/r/")] == [("a/r/sub/y.bin", 0), ("a/r/x.bin", 5)]
    assert store.list_dirs("") == ["a"]
    assert store.list_dirs("a/") == ["q", "r"]
    store.delete(["a/r/x.bin", "a/r/missing"])
    assert keys(store, "a/") == ["a/q/z.bin", "a/r/sub/y.bin"]
    with pytest.raises(ObjectMissing):
        store.get("a/r/x.bin")


def test_bytes_round_trip_exactly(store):
    data = os.urandom(300_001) + bytes(range(256))
    store.put("a/r/step-0000000001/model.pt", data)
    assert store.get("a/r/step-0000000001/model.pt") == data
    assert sha(b"".join(store.read("a/r/step-0000000001/model.pt", chunk_bytes=4096))) == sha(data)


def test_put_replaces_atomically(store):
    store.put("k", b"old")
    store.put("k", b"new value")
    assert store.get("k") == b"new value"
    assert [(o.key, o.size) for o in store.list("")] == [("k", 9)]


def test_readers_see_the_old_or_the_new_bytes_never_a_mix(store):
    old, new = b"o" * 300_000, b"n" * 200_000
    store.put("k", old)
    rewritten = threading.Event()

    def rewrite() -> None:
        try:
            for i in range(20):
                store.put("k", new if i % 2 == 0 else old)
        finally:
            rewritten.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen = []
    while not rewritten.is_set() or not seen:
        seen.append(store.get("k"))
    writer.join()
    assert all(b in (old, new) for b in seen)
    assert store.get("k") == old  # the last of the 20 writes


def test_a_written_object_appears_only_when_its_writer_closes(store):
    store.put("a/obj", b"the old bytes")
    with store.open_writer("a/obj") as w:
        w.write(b"new ")
        w.write(memoryview(b"bytes, in pieces"))
        assert store.get("a/obj") == b"the old bytes"
        with store.open_writer("a/fresh") as fresh:
            fresh.write(b"x")
            assert "a/fresh" not in keys(store, "a/")
            with pytest.raises(ObjectMissing):
                store.get("a/fresh")
    assert store.get("a/obj") == b"new bytes, in pieces"
    assert store.get("a/fresh") == b"x"
    with store.open_writer("a/empty"):
        pass
    assert store.get("a/empty") == b""
    assert [(o.key, o.size) for o in store.list("a/")] == [("a/empty", 0), ("a/fresh", 1), ("a/obj", 20)]


def test_large_object_goes_up_in_parts_and_reads_back_in_chunks(backend, store):
    data = os.urandom(12 * MiB + 12345)  # three parts of 5 MiB, the last short
    with store.open_writer("big/obj") as w:
        for i in range(0, len(data), 1_000_003):
            w.write(data[i:i + 1_000_003])
            if i >= PART_BYTES + 1_000_003:  # a part is up: a store with multipart uploads has one open
                assert [u.key for u in store.pending_uploads("")] == (["big/obj"] if backend.multipart else [])
    assert store.pending_uploads("") == []
    assert [o.size for o in store.list("big/")] == [len(data)]
    chunks = list(store.read("big/obj", chunk_bytes=MiB))
    assert max(len(c) for c in chunks) <= MiB and all(chunks)
    assert b"".join(chunks) == data


def test_aborted_writer_leaves_nothing(store):
    w = store.open_writer("a/partial")
    w.write(os.urandom(6 * MiB))  # past one part, so S3 has a multipart upload open
    w.abort()
    assert store.list("a/") == []
    assert store.pending_uploads("") == []


def test_a_failed_or_aborted_rewrite_keeps_the_old_object(store):
    store.put("a/obj", b"kept")
    with pytest.raises(RuntimeError, match="the producer failed"):
        with store.open_writer("a/obj") as w:
            w.write(os.urandom(6 * MiB))
            raise RuntimeError("the producer failed")
    w = store.open_writer("a/obj")
    w.write(b"never seen")
    w.abort()
    w.abort()  # never raises, even twice
    assert store.get("a/obj") == b"kept"
    assert keys(store) == ["a/obj"]
    assert store.pending_uploads("") == []


def test_writers_on_many_threads_at_once(store):
    def write(n: int) -> None:
        for i in range(4):
            with store.open_writer(f"t{n}/obj-{i}") as w:
                w.write(bytes([n]) * (n * 10 + i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [(o.key, o.size) for o in store.list("")] == [(f"t{n}/obj-{i}", n * 10 + i) for n in range(8)
                                                         for i in range(4)]
    assert store.get("t7/obj-3") == bytes([7]) * 73


# -- missing keys ----------------------------------------------------------------------------------------


def test_a_missing_key_is_object_missing_naming_it(store):
    store.put("a/present", b"x")
    for read in (lambda: store.get("a/absent"), lambda: list(store.read("a/absent")),
                 lambda: store.checksum_of("a/absent"), lambda: store.get("nowhere/absent")):
        with pytest.raises(ObjectMissing, match="absent") as err:
            read()
        assert isinstance(err.value, NotFound)
    assert keys(store) == ["a/present"]


# -- listing ---------------------------------------------------------------------------------------------


def test_a_listing_is_every_object_under_a_string_prefix_sorted_by_key(store):
    for key in ("a/r/x", "a/rx/y", "a/r/sub/deep/z", "a/q", "b/r/x", "a/r0"):
        store.put(key, key.encode())
    assert keys(store) == ["a/q", "a/r/sub/deep/z", "a/r/x", "a/r0", "a/rx/y", "b/r/x"]
    assert keys(store, "a/r/") == ["a/r/sub/deep/z", "a/r/x"]
    assert keys(store, "a/r") == ["a/r/sub/deep/z", "a/r/x", "a/r0", "a/rx/y"]
    assert keys(store, "a/r/x") == ["a/r/x"]
    assert keys(store, "a/r/s") == ["a/r/sub/deep/z"]
    assert keys(store, "c/") == keys(store, "a/nothing/") == keys(store, "a/r/x/") == []


def test_a_listing_gives_each_object_its_size_time_and_a_version_that_changes_with_its_bytes(store):
    before = time.time()
    store.put("a/v", b"1234")
    [first] = store.list("a/")
    after = time.time()
    assert (first.key, first.size) == ("a/v", 4)
    assert before - 2 <= first.modified <= after + 2  # S3 keeps whole seconds
    store.put("a/v", b"5678")
    [second] = store.list("a/")
    assert second.size == 4 and first.version and second.version and second.version != first.version
    assert store.checksum_of("a/v")[0] == 4


def test_a_store_lists_only_its_own_root_never_a_sibling_sharing_its_name(store_url, store):
    sibling = open_test_store(f"{store_url}-old")
    sibling.put("a/r/x", b"not ours")
    with sibling.open_writer("a/r/big") as w:
        w.write(os.urandom(6 * MiB))
        assert store.pending_uploads("") == []
    assert store.list("") == [] and store.list_dirs("") == [] and store.list("a") == []
    store.put("a/r/y", b"ours")
    assert keys(store) == ["a/r/y"] and keys(sibling) == ["a/r/big", "a/r/x"]


def test_list_dirs_names_the_folders_right_under_a_prefix(store):
    for key in ("a/r/x", "a/q/y", "a/q/deep/z", "a/file", "b/x", "c/d/e/f"):
        store.put(key, b"x")
    assert store.list_dirs("") == ["a", "b", "c"]
    assert store.list_dirs("a/") == ["q", "r"]
    assert store.list_dirs("a/q/") == ["deep"]
    assert store.list_dirs("c/") == ["d"]
    assert store.list_dirs("a/r/") == [] and store.list_dirs("nothing/") == []
    store.delete(["a/q/y", "a/q/deep/z"])
    assert store.list_dirs("a/") == ["r"]  # a folder whose objects were deleted is gone


# -- deleting --------------------------------------------------------------------------------------------


def test_delete_ignores_missing_keys_and_may_be_repeated(store):
    doomed = [f"a/r/{i:03d}" for i in range(30)]
    for key in doomed:
        store.put(key, b"x")
    store.put("a/kept", b"k")
    store.delete([])
    store.delete([*doomed, "a/r/missing", "nowhere/at/all"])
    assert keys(store) == ["a/kept"]
    store.delete(doomed)
    assert keys(store) == ["a/kept"] and store.get("a/kept") == b"k"


def test_delete_takes_any_number_of_keys_in_one_call(store):
    many = [f"a/m/{i:04d}" for i in range(2500)]  # more than one S3 DeleteObjects request takes (1000)
    for key in (many[0], many[1500], many[-1], "a/kept"):
        store.put(key, key.encode())
    store.delete(many)
    assert keys(store) == ["a/kept"]


# -- checksums and presigned URLs ------------------------------------------------------------------------


def test_checksum_of_gives_the_size_and_at_most_the_true_sha256(store):
    data = os.urandom(70_000)
    store.put("a/obj", data)
    size, digest = store.checksum_of("a/obj")
    assert size == len(data)
    assert digest in (None, sha(data))  # a store that keeps no checksum says None, never a wrong one


def test_presigned_urls_move_bytes_past_the_process_where_the_backend_presigns(backend, store):
    data = os.urandom(100_000)
    put = store.presign_put("a/direct", len(data), sha(data), 60)
    get_grant = store.presign_get("a/direct", 60)
    if not backend.presigns:
        assert (put, get_grant) == (None, None)
        assert store.list("") == []
        return
    assert put is not None and get_grant is not None and put.expires_s == 60.0
    allowed = dict(allowed=("127.0.0.1:*",), field_name="test", setting="test", timeout_s=10)
    presigned.put(put, len(data), [data], **allowed)
    assert store.get("a/direct") == data
    assert store.checksum_of("a/direct")[1] in (None, sha(data))
    assert presigned.read_all(get_grant, len(data), **allowed) == (bytearray(data), sha(data))


# -- multipart uploads -----------------------------------------------------------------------------------


def test_an_unfinished_multipart_upload_is_listed_until_aborted(backend, store):
    w = store.open_writer("a/r/big")
    w.write(os.urandom(6 * MiB))  # past one part
    pending = store.pending_uploads("")
    if not backend.multipart:
        assert pending == []
        w.abort()
        assert store.list("") == []
        return
    [upload] = pending
    assert upload.key == "a/r/big" and upload.upload_id
    assert upload.initiated <= time.time()  # moto gives every upload one fixed date, so no lower bound here
    assert store.pending_uploads("a/r/") == [upload] and store.pending_uploads("a/q/") == []
    store.abort_upload(upload)
    assert store.pending_uploads("") == []
    store.abort_upload(upload)  # already gone: fine
    w.abort()
    assert store.list("") == [] and store.pending_uploads("") == []


# -- a store that goes away ------------------------------------------------------------------------------


def test_a_store_that_cannot_be_reached_is_unavailable_naming_it_and_comes_back(backend, request, store_url,
                                                                                store):
    store.put("a/r/x", b"kept")
    hurried = open_test_store(store_url, timeout_s=0.5, retries=1)
    calls = {
        "check": hurried.check,
        "get": lambda: hurried.get("a/r/x"),
        "list": lambda: hurried.list("a/"),
        "list_dirs": lambda: hurried.list_dirs("a/"),
        # A write or delete that timed out may still land once the server answers again: other keys.
        "put": lambda: hurried.put("a/r/y", b"maybe"),
        "open_writer": lambda: hurried.open_writer("a/r/y").close(),
        "delete": lambda: hurried.delete(["a/r/z"]),
    }
    with backend.outage(request, store):
        for name, call in calls.items():
            with pytest.raises(StoreUnavailable) as err:
                call()
            assert store.url in err.value.message, name
    store.check()
    assert store.get("a/r/x") == b"kept"
    assert set(keys(store)) <= {"a/r/x", "a/r/y"}
    store.put("a/r/after", b"works")
    assert store.get("a/r/after") == b"works"
