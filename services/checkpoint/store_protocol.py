"""The store protocol: what the checkpoint service needs from object storage, and nothing more.

A store maps keys to bytes. A key is a '/'-separated path relative to the
store's root whose names are never '', '.' or '..' (layout.py makes every key
the service uses). Nothing here knows about checkpoints; `catalog.py` builds
those on top.

Every backend (store_file.py, store_s3.py) subclasses `Store` and passes
tests/service/test_store_conformance.py, which checks each contract below with
real values; `store.open_store` picks the backend a URL's scheme names.

Errors, on every backend: a missing key is ObjectMissing (a NotFound); a store
that is down or failing is StoreUnavailable; one that is misconfigured (no such
bucket, bad credentials) is FailedPrecondition; a full disk is ResourceExhausted.
Each message names the store's URL (ObjectMissing names the key). A write or
delete that raised StoreUnavailable may still take effect: a server may act on
a request whose answer timed out, so its outcome is unknown (the staging sweep
removes what such a failed upload leaves).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from rewind.errors import NotFound
from rewind.presigned import Grant


@dataclass(frozen=True)
class StoreOptions:
    """How `open_store` opens a store; each backend takes what applies to it.

    Attributes:
        create: create a file:// root that does not exist yet.
        timeout_s: connect and read timeout of each request to a store server.
        retries: attempts per request to a store server, including the first.
        part_bytes: multipart part size of a store with multipart uploads.
    """

    create: bool = True
    timeout_s: float = 5.0
    retries: int = 3
    part_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes, last-modified time (epoch seconds), and a
    version tag that changes whenever the object's bytes change (S3: the ETag, which rewriting
    the same bytes keeps; a file: its inode and mtime in ns)."""

    key: str
    size: int
    modified: float
    version: str = ""


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload begun and neither finished nor aborted: its key, id and start (epoch seconds)."""

    key: str
    upload_id: str
    initiated: float


class ObjectMissing(NotFound):
    """The key does not exist."""


class ObjectWriter(ABC):
    """Writes one object; it exists under its key only after `close()`.

    Until then readers see the old object (or none) under the key; a backend may
    keep the bytes in flight under another name in the same folder (file://:
    `.<name>.<8 hex>.part`), which listings show and the staging sweep removes.
    As a context manager it closes on success and aborts on an exception.
    """

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (the writer does not keep `data` past the call unless it copied it)."""

    @abstractmethod
    def close(self) -> None:
        """Finish the object durably and make it visible under its key, replacing any object there,
        all at once. If this raises, nothing new is visible and what was written is discarded."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written (temporaries and multipart parts included); never raises."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Store(ABC):
    """Keys to bytes, with listing; safe to use from many threads at once.

    Reads see every write this process finished (read-after-write, listings included).

    Attributes:
        url: the store's URL (file:///abs/path, s3://bucket/prefix); every error message names it.
        presigns: whether presign_put/presign_get can hand out URLs (then big bytes may skip this
            process); when false they always return None.
    """

    url: str
    presigns = False

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, options: StoreOptions) -> Store:
        """Open the store a URL of this backend's scheme names (`store.BACKENDS` maps schemes to backends).

        Raises:
            InvalidArgument: a malformed URL, naming it.
        """

    def relative(self, path: str) -> str | None:
        """The key of a filesystem path (or file:// URL) inside this store; None when it is not one.

        Only a store on this machine's file system has such paths.
        """
        return None

    def location(self, key: str) -> str:
        """The full URL of a key (or key prefix): the store's URL, '/', the key; the URL alone for ''."""
        return f"{self.url}/{key}" if key else self.url

    @abstractmethod
    def check(self) -> None:
        """Return when the store is usable.

        Raises:
            StoreUnavailable: it cannot be reached (a missing directory, a server that does not answer).
            FailedPrecondition: it is misconfigured (no such bucket, access denied).
        """

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """A writer of a new object at key (see ObjectWriter: nothing is visible before its close())."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write a small object atomically, replacing any object at key: readers see the old or the new
        bytes, never a mix or nothing."""

    @abstractmethod
    def read(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object's bytes, in non-empty chunks of at most chunk_bytes.

        Raises (when iteration starts):
            ObjectMissing: no such key.
        """

    def get(self, key: str) -> bytes:
        """An object's bytes.

        Raises:
            ObjectMissing: no such key.
        """
        return b"".join(self.read(key))

    @abstractmethod
    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with prefix (as a string: 'a/r' lists a/r/x and a/rx), at any
        depth, sorted by key.

        Only objects: never folders, and never anything outside the store's root (a sibling root
        sharing its name's beginning, rewind-old next to rewind, included). A prefix nothing starts
        with lists nothing; it is no error.
        """

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """The sorted names of the immediate 'sub-folders' under prefix ('' or ending in '/'): those that
        hold an object at some depth. A folder whose last object delete() removed is no longer listed;
        a store with real folders (file://) may list one an aborted write left empty."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Remove objects, any number of them; missing keys are ignored, so deleting twice is fine."""

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Multipart uploads under prefix that were begun and never finished or aborted (none but on S3).

        A writer past one part has one; its close() or abort() ends it. One a killed process left
        stays until abort_upload().
        """
        return []

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abandon a multipart upload that pending_uploads() returned and drop its parts; one already
        finished or aborted is fine. Only stores with multipart uploads are ever asked."""
        raise NotImplementedError(f"store {self.url} has no multipart uploads")

    def presign_put(self, key: str, size: int, sha256: str, expires_s: float) -> Grant | None:
        """A URL through which another process may PUT exactly this object, or None (then it comes
        through this process: a file:// store has no such URLs, and S3 none past one PUT's 5 GiB).

        Args:
            key: the object's key.
            size: its byte count, a signed header.
            sha256: its hex digest, a signed header the store checks the body against.
            expires_s: seconds the URL stays valid.
        """
        return None

    def presign_get(self, key: str, expires_s: float) -> Grant | None:
        """A URL through which another process may GET this object, or None (a file:// store has none)."""
        return None

    @abstractmethod
    def checksum_of(self, key: str) -> tuple[int, str | None]:
        """An object's size and the sha256 (hex) the store checked it against, if it keeps one (S3 does
        for a single PUT sent with x-amz-checksum-sha256, as a presigned PUT is; a file has none).

        Raises:
            ObjectMissing: no such key.
        """


def age_s(obj: ObjectInfo) -> float:
    """Seconds since an object was last modified."""
    return time.time() - obj.modified
