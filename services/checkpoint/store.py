"""Object storage behind a URL: a local directory (file://) or S3 (s3://).

Both stores speak in keys: '/'-separated paths relative to the store's root.
Neither knows about checkpoints; `catalog.py` builds those on top.

    store = open_store("s3://my-bucket/rewind")     # endpoint etc. from AWS_* env
    with store.open_writer("a/r/step-0000000100/model.pt") as w:
        w.write(data)
    store.get("a/r/step-0000000100/model.pt")
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import stat
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from rewind.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreUnavailable,
)
from rewind.presigned import Grant

log = logging.getLogger(__name__)

DEFAULT_ROOT = "./rewind-data"
MIN_PART_BYTES = 5 * 1024 * 1024  # S3's smallest multipart part (except the last)
MAX_SINGLE_PUT_BYTES = 5 * 1024**3  # S3's largest single PUT: bigger objects come through this service


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key, size in bytes, last-modified time (epoch seconds), and a
    version tag that changes whenever the object is rewritten (S3: the ETag)."""

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
    """Writes one object; it exists under its key only after `close()`."""

    @abstractmethod
    def write(self, data: bytes | memoryview) -> None:
        """Append bytes."""

    @abstractmethod
    def close(self) -> None:
        """Finish the object (durably)."""

    @abstractmethod
    def abort(self) -> None:
        """Discard everything written; never raises."""

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class Store(ABC):
    """Keys to bytes, with listing. `url` names the store in every error."""

    url: str
    presigns = False  # whether presign_put can hand out URLs (then big bytes may skip this process)

    def relative(self, path: str) -> str | None:
        """The key of a filesystem path (or file:// URL) inside this store; None when it is not one.

        Only a store on this machine's file system has such paths.
        """
        return None

    def location(self, key: str) -> str:
        """The full URL of a key (or key prefix)."""
        return f"{self.url}/{key}" if key else self.url

    @abstractmethod
    def check(self) -> None:
        """Raise Unavailable (or FailedPrecondition) unless the store is usable."""

    @abstractmethod
    def open_writer(self, key: str) -> ObjectWriter:
        """A writer for a new object at key."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write a small object atomically: readers see the old or the new bytes."""

    @abstractmethod
    def read(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Stream an object's bytes.

        Raises:
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
        """Every object whose key starts with prefix (recursively)."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate 'sub-directories' under prefix (which ends in '/' or is empty)."""

    @abstractmethod
    def delete(self, keys: list[str]) -> None:
        """Remove objects; missing keys are ignored."""

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        """Multipart uploads under prefix that were begun and never finished or aborted (none but on S3)."""
        return []

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

    def checksum_of(self, key: str) -> tuple[int, str | None]:
        """An object's size and the sha256 (hex) the store checked it against, if it keeps one.

        Raises:
            ObjectMissing: no such key.
        """
        raise NotImplementedError(f"store {self.url} keeps no checksums")

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abandon a multipart upload and drop its parts; one already gone is fine."""
        raise NotImplementedError(f"store {self.url} has no multipart uploads")


# -- file:// -----------------------------------------------------------------
#
# The file store never follows a symbolic link below its root, and never reads
# anything but a regular file. Every key is opened one name at a time from a
# descriptor of the root, with O_NOFOLLOW, and every change (mkdir, create,
# rename, unlink, rmdir) is made relative to the descriptor of the folder that
# was opened that way. So a link planted anywhere in the tree, even one swapped
# in while a call runs, can neither take a read, write or delete outside the
# root nor redirect one inside it:
#
# - a key that is, or passes through, a link is refused with PERMISSION_DENIED
#   (the message names the key, never where the link points);
# - listings (and so the staging sweep and retention) skip links and other
#   non-regular files: they are not objects of this store.
#
# The root itself was resolved when the store opened, so a root reached
# through a link (/data -> /mnt/disk) is fine.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone left in the tree must not hang the call.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class _Missing(Exception):
    """A folder on a key's path does not exist (each caller decides what that means)."""


class _FileWriter(ObjectWriter):
    def __init__(self, store: FileStore, key: str) -> None:
        folder, name = store.split(key)
        self._store = store
        self._path = store.path_of(key)
        self._name = name
        # A temporary name, so a crash never leaves a truncated file under the final name.
        self._tmp = f".{name}.{uuid.uuid4().hex[:8]}.part"
        # The folder stays open until close() or abort(): the rename lands in the
        # folder that was checked, whatever is done to the path meanwhile.
        self._dir: int | None = store.open_folder(folder, key, create=True)
        try:
            store.refuse_link(self._dir, name, key)
            fd = os.open(self._tmp, _CREATE_FLAGS, 0o666, dir_fd=self._dir)
        except BaseException:
            self._release()
            raise
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes | memoryview) -> None:
        with self._store.errors("write", self._path):
            self._file.write(data)

    def close(self) -> None:
        try:
            with self._store.errors("write", self._path):
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                # rename() replaces the name itself; it never follows a link there.
                os.replace(self._tmp, self._name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
                os.fsync(self._dir)
        except BaseException:
            self.abort()
            raise
        self._release()

    def abort(self) -> None:
        try:
            self._file.close()
            if self._dir is not None:
                os.unlink(self._tmp, dir_fd=self._dir)
        except OSError:
            pass
        self._release()

    def _release(self) -> None:
        if self._dir is not None:
            os.close(self._dir)
            self._dir = None


class FileStore(Store):
    """A directory on a local or mounted file system (POSIX: every path is opened relative to a folder).

    Args:
        root: the directory; it is created if missing when `create` is true.
        create: create the root now (the service does at start). After that a
            missing root means the store went away, and calls fail with
            Unavailable instead of silently recreating it.
    """

    def __init__(self, root: str | os.PathLike, create: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = f"file://{self.root}"
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(f"store {self.url}: cannot create the directory ({exc.strerror})") from None

    def path_of(self, key: str) -> Path:
        """Where a key lives, for messages and for tests; the store itself never opens this path."""
        return self.root.joinpath(*key.split("/")) if key else self.root

    def relative(self, path: str) -> str | None:
        # resolve() follows symlinks: a link inside the store that points out of it is outside.
        text = path.removeprefix("file://")
        if not text.startswith("/"):
            return None
        try:
            return Path(text).resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def errors(self, action: str, path: Path):
        """Context manager: OSError -> Unavailable/ResourceExhausted naming the store."""
        return _FileErrors(self, action, path)

    # -- opening without following links -----------------------------------

    @staticmethod
    def parts(key: str) -> list[str]:
        """A key's names; '', '.' and '..' never name anything in the store."""
        parts = key.split("/") if key else []
        if any(p in ("", ".", "..") for p in parts):
            raise InvalidArgument(f"store key {key!r}: empty, '.' and '..' names are not allowed")
        return parts

    def split(self, key: str) -> tuple[list[str], str]:
        """A key's folder names and its own name."""
        parts = self.parts(key)
        if not parts:
            raise InvalidArgument("store key: is empty; name an object")
        return parts[:-1], parts[-1]

    def refused(self, key: str) -> PermissionDenied:
        # The key, never the link's target: where it points is nobody's business.
        return PermissionDenied(f"store {self.url}: {key} is, or is inside, a symbolic link or something else "
                                "that is not a regular file or folder; the file store never follows links")

    def refuse_link(self, folder: int, name: str, key: str) -> None:
        """Raise PermissionDenied if `name` in the open `folder` is a symbolic link (a missing name is fine)."""
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(info.st_mode):
            raise self.refused(key)

    def open_folder(self, parts: list[str], key: str, create: bool = False) -> int:
        """A descriptor of root/parts..., opened one name at a time without following links; the caller closes it.

        Raises:
            PermissionDenied: a name on the way is a link.
            _Missing: a name on the way does not exist, or is not a folder (not when `create`).
            OSError: the root is gone, or the file system failed.
        """
        fd = os.open(self.root, _DIR_FLAGS)
        try:
            for name in parts:
                child = self._child(fd, name, key, create)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _child(self, fd: int, name: str, key: str, create: bool) -> int:
        if create:
            with contextlib.suppress(FileExistsError):  # mkdir never follows a link: one there is EEXIST
                os.mkdir(name, dir_fd=fd)
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:  # a link is ENOTDIR (or ELOOP) under O_DIRECTORY | O_NOFOLLOW
            self.refuse_link(fd, name, key)
            if create or exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
            raise _Missing(key) from None

    @contextlib.contextmanager
    def folder(self, parts: list[str], key: str) -> Iterator[int | None]:
        """open_folder() as a context manager; None when the folder does not exist."""
        try:
            fd = self.open_folder(parts, key)
        except _Missing:
            yield None
            return
        try:
            yield fd
        finally:
            os.close(fd)

    # -- the Store interface ----------------------------------------------------

    def check(self) -> None:
        if not self.root.is_dir():
            raise StoreUnavailable(f"store {self.url} is unavailable: the directory is missing (unmounted or removed?)")

    def open_writer(self, key: str) -> ObjectWriter:
        self.check()
        with self.errors("write", self.path_of(key)):
            return _FileWriter(self, key)

    def put(self, key: str, data: bytes) -> None:
        with self.open_writer(key) as w:
            w.write(data)

    def read(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        self.check()
        path = self.path_of(key)
        with self.errors("read", path):
            f = self._open_file(key)
        with f, self.errors("read", path):
            while chunk := f.read(chunk_bytes):
                yield chunk

    def _open_file(self, key: str):
        """A regular file, opened without following a link anywhere on its path."""
        folder, name = self.split(key)
        with self.folder(folder, key) as fd:
            try:
                if fd is None:
                    raise FileNotFoundError(key)
                file = os.open(name, _READ_FLAGS, dir_fd=fd)
            except (FileNotFoundError, NotADirectoryError):
                raise ObjectMissing(f"{self.location(key)} does not exist") from None
            except OSError:
                self.refuse_link(fd, name, key)  # a link is ELOOP under O_NOFOLLOW
                raise
        if not stat.S_ISREG(os.fstat(file).st_mode):  # a FIFO, a device, a folder
            os.close(file)
            raise self.refused(key)
        return os.fdopen(file, "rb")

    def list(self, prefix: str) -> list[ObjectInfo]:
        self.check()
        # Walk the deepest existing folder the prefix names; keys are filtered below.
        parts = self.parts(prefix.rstrip("/"))
        with self.errors("list", self.path_of(prefix)):
            with self.folder(parts, prefix) as fd:
                if fd is not None:
                    return self._walk(fd, parts, prefix)
            if not parts:
                return []
            with self.folder(parts[:-1], prefix) as fd:
                return [] if fd is None else self._walk(fd, parts[:-1], prefix)

    def _walk(self, fd: int, base: list[str], prefix: str) -> list[ObjectInfo]:
        """The regular files under an open folder whose keys start with prefix. fwalk never enters a linked
        folder, and links to files are skipped: a listing never reaches outside the root."""
        found = []
        for top, _dirs, files, top_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            folder = [*base, *top.split("/")[1:]]
            for name in files:
                key = "/".join([*folder, name])
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
                except FileNotFoundError:  # removed while listing
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append(ObjectInfo(key, st.st_size, st.st_mtime, f"{st.st_ino}-{st.st_mtime_ns}"))
        return sorted(found, key=lambda o: o.key)

    def list_dirs(self, prefix: str) -> list[str]:
        self.check()
        parts = self.parts(prefix.rstrip("/"))
        with self.errors("list", self.path_of(prefix)), self.folder(parts, prefix) as fd:
            if fd is None:
                return []
            # A linked folder is not a folder of this store (is_dir does not follow it here).
            with os.scandir(fd) as entries:
                return sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))

    def delete(self, keys: list[str]) -> None:
        self.check()
        emptied = set()
        for key in keys:
            folder, name = self.split(key)
            with self.errors("delete", self.path_of(key)), self.folder(folder, key) as fd:
                if fd is None:
                    continue
                # unlink() would remove a link itself, not its target; refused all the same, like any key.
                self.refuse_link(fd, name, key)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
            emptied.add(tuple(folder))
        # Drop directories the deletes emptied, so the tree stays browsable.
        for folder in sorted(emptied, key=len, reverse=True):
            self._prune(list(folder))

    def _prune(self, parts: list[str]) -> None:
        """Remove root/parts and its parents while they are empty (never the root; rmdir never follows a link)."""
        while parts:
            try:
                with self.folder(parts[:-1], "/".join(parts)) as fd:
                    if fd is None:
                        return
                    os.rmdir(parts[-1], dir_fd=fd)
            except (OSError, PermissionDenied):
                return
            parts = parts[:-1]


class _FileErrors:
    def __init__(self, store: FileStore, action: str, path: Path) -> None:
        self.store, self.action, self.path = store, action, path

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if not isinstance(exc, OSError):
            return False
        what = f"store {self.store.url}: cannot {self.action} {self.path}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"{what}: the disk is full; free space or lower keep_last") from None
        if not self.store.root.is_dir():
            raise StoreUnavailable(f"store {self.store.url} is unavailable: the directory is missing") from None
        raise StoreUnavailable(f"{what} ({exc.strerror or exc})") from None


# -- s3:// -------------------------------------------------------------------


class _S3Writer(ObjectWriter):
    """Small objects in one PUT; larger ones as a multipart upload whose parts
    go up in background threads while the caller keeps writing."""

    def __init__(self, store: S3Store, key: str) -> None:
        self._store = store
        self._key = store.key_of(key)
        # Chunks wait in a list and are joined once per part: one copy per byte.
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._upload_id: str | None = None
        self._parts: list[futures.Future] = []
        # Bounds memory: at most this many parts in flight or waiting.
        self._slots = threading.BoundedSemaphore(store.max_concurrency + 2)

    def write(self, data: bytes | memoryview) -> None:
        self._pending.append(bytes(data) if isinstance(data, memoryview) else data)
        self._pending_size += len(data)
        # Parts may differ in size; S3 only needs every part but the last to be >= 5 MiB.
        if self._pending_size >= self._store.part_bytes:
            self._send_part(self._take())

    def _take(self) -> bytes:
        body = b"".join(self._pending)
        self._pending.clear()
        self._pending_size = 0
        return body

    def _send_part(self, body: bytes) -> None:
        s = self._store
        if self._upload_id is None:
            response = s.call("start an upload of", self._key, s.client.create_multipart_upload,
                              Bucket=s.bucket, Key=self._key)
            self._upload_id = response["UploadId"]
        self._raise_failed_part()
        self._slots.acquire()
        number = len(self._parts) + 1

        def upload() -> dict:
            try:
                r = s.call("upload a part of", self._key, s.client.upload_part, Bucket=s.bucket, Key=self._key,
                           UploadId=self._upload_id, PartNumber=number, Body=body)
                return {"PartNumber": number, "ETag": r["ETag"]}
            finally:
                self._slots.release()

        self._parts.append(s.pool.submit(upload))

    def _raise_failed_part(self) -> None:
        for f in self._parts:
            if f.done() and f.exception() is not None:
                raise f.exception()

    def close(self) -> None:
        s = self._store
        if self._upload_id is None:
            s.call("write", self._key, s.client.put_object, Bucket=s.bucket, Key=self._key, Body=self._take())
            return
        if self._pending_size:
            self._send_part(self._take())
        parts = [f.result() for f in self._parts]
        s.call("finish the upload of", self._key, s.client.complete_multipart_upload, Bucket=s.bucket,
               Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": parts})

    def abort(self) -> None:
        self._take()
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        try:
            self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._key,
                                                      UploadId=self._upload_id)
        except Exception:
            log.warning("could not abort the multipart upload of %s; S3 lifecycle rules will reap it", self._key)


class S3Store(Store):
    """A bucket (and optional prefix) on AWS S3, MinIO or another S3-compatible store.

    The endpoint, region and credentials come from the standard AWS sources
    (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ~/.aws/...). Path-style
    addressing is used when a custom endpoint is set (MinIO and most
    S3-compatible stores need it); REWIND_S3_ADDRESSING_STYLE overrides.

    Args:
        bucket: the bucket name.
        prefix: key prefix inside the bucket ('' for the bucket root).
        timeout_s: connect and read timeout of every request.
        retries: attempts per request, including the first.
        part_bytes: multipart part size (at least 5 MiB).
        max_concurrency: parts uploaded in parallel per object.
    """

    presigns = True

    def __init__(self, bucket: str, prefix: str = "", *, timeout_s: float = 5.0, retries: int = 3,
                 part_bytes: int = 8 * 1024 * 1024, max_concurrency: int = 8) -> None:
        import boto3
        from botocore.config import Config

        if not bucket:
            raise InvalidArgument("store: an s3:// URL needs a bucket, e.g. s3://my-bucket/rewind")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.part_bytes = max(part_bytes, MIN_PART_BYTES)
        self.max_concurrency = max_concurrency
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        style = os.environ.get("REWIND_S3_ADDRESSING_STYLE") or ("path" if endpoint else "auto")
        config = Config(
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"max_attempts": retries, "mode": "standard"},
            s3={"addressing_style": style},
            # SigV4 for presigned URLs too (botocore may presign with SigV2, which signs no headers).
            signature_version="s3v4",
            max_pool_connections=max(10, max_concurrency * 4),
            # Only checksum when the operation requires it: some S3-compatible
            # stores reject the newer default trailing checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client = boto3.session.Session().client("s3", config=config)
        self.endpoint = self.client.meta.endpoint_url
        self.pool = futures.ThreadPoolExecutor(max_workers=max_concurrency * 2, thread_name_prefix="rewind-s3")

    def key_of(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _listing_prefix(self, prefix: str) -> str:
        """The bucket prefix of a listing; '' means the store's own folder, never a sibling (rewind-old/...)."""
        return self.key_of(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    def call(self, action: str, key: str, fn, **kwargs):
        """Run one boto3 call, mapping its failures to RewindErrors that name the store."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in ("NoSuchKey", "NoSuchUpload", "404", "NotFound"):
                raise ObjectMissing(f"s3://{self.bucket}/{key} does not exist") from None
            if code == "NoSuchBucket":
                raise FailedPrecondition(f"store {self.url}: bucket {self.bucket!r} does not exist at "
                                         f"{self.endpoint}; create it first (aws s3 mb / mc mb)") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise FailedPrecondition(f"store {self.url}: access denied ({code}); check AWS_ACCESS_KEY_ID "
                                         "and AWS_SECRET_ACCESS_KEY") from None
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"):
                raise StoreUnavailable(
                    f"store {self.url} at {self.endpoint} failed to {action} {key}: {code}") from None
            raise FailedPrecondition(f"store {self.url}: cannot {action} {key}: {code} {exc}") from None
        except NoCredentialsError:
            raise FailedPrecondition(f"store {self.url}: no AWS credentials; set AWS_ACCESS_KEY_ID and "
                                     "AWS_SECRET_ACCESS_KEY (or a profile)") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"store {self.url} at {self.endpoint} is unavailable: cannot {action} {key} "
                              f"({type(exc).__name__}: {exc})") from None

    def check(self) -> None:
        try:
            self.call("reach the bucket of", "", self.client.head_bucket, Bucket=self.bucket)
        except ObjectMissing:  # HEAD carries no error code, only 404
            raise FailedPrecondition(f"store {self.url}: bucket {self.bucket!r} does not exist at "
                                     f"{self.endpoint}; create it first (aws s3 mb / mc mb)") from None

    def open_writer(self, key: str) -> ObjectWriter:
        return _S3Writer(self, key)

    def put(self, key: str, data: bytes) -> None:
        # A single PUT replaces an object atomically on S3.
        self.call("write", key, self.client.put_object, Bucket=self.bucket, Key=self.key_of(key), Body=data)

    def read(self, key: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError

        response = self.call("read", key, self.client.get_object, Bucket=self.bucket, Key=self.key_of(key))
        body = response["Body"]
        try:
            while chunk := body.read(chunk_bytes):
                yield chunk
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"store {self.url} at {self.endpoint} is unavailable: reading {key} failed "
                              f"({type(exc).__name__}: {exc})") from None
        finally:
            body.close()

    def list(self, prefix: str) -> list[ObjectInfo]:
        found = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": self._listing_prefix(prefix)}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list", prefix, self.client.list_objects_v2, **kwargs)
            for obj in page.get("Contents", []):
                found.append(ObjectInfo(self._rel(obj["Key"]), obj["Size"], obj["LastModified"].timestamp(),
                                        obj.get("ETag", "")))
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def list_dirs(self, prefix: str) -> list[str]:
        names = []
        token = None
        base = self._listing_prefix(prefix)
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": base, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("list", prefix, self.client.list_objects_v2, **kwargs)
            names += [p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return sorted(names)
            token = page["NextContinuationToken"]

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            objects = [{"Key": self.key_of(k)} for k in keys[i:i + 1000]]
            response = self.call("delete", keys[i], self.client.delete_objects, Bucket=self.bucket,
                                 Delete={"Objects": objects, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise StoreUnavailable(f"store {self.url}: could not delete {first.get('Key')}: {first.get('Code')}")

    def presign_put(self, key: str, size: int, sha256: str, expires_s: float) -> Grant | None:
        if size > MAX_SINGLE_PUT_BYTES:
            return None
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        expires = max(1, int(expires_s))
        # Content-Length and x-amz-checksum-sha256 become signed headers (X-Amz-SignedHeaders): the
        # URL writes this key only, with these bytes only (S3 recomputes the checksum and refuses a mismatch).
        url = self.call("presign an upload to", key, self.client.generate_presigned_url, ClientMethod="put_object",
                        Params={"Bucket": self.bucket, "Key": self.key_of(key), "ContentLength": size,
                                "ChecksumSHA256": checksum},
                        ExpiresIn=expires)
        return Grant(url, {"x-amz-checksum-sha256": checksum}, float(expires))

    def presign_get(self, key: str, expires_s: float) -> Grant | None:
        url = self.call("presign a download of", key, self.client.generate_presigned_url, ClientMethod="get_object",
                        Params={"Bucket": self.bucket, "Key": self.key_of(key)}, ExpiresIn=max(1, int(expires_s)))
        return Grant(url, {}, float(max(1, int(expires_s))))

    def checksum_of(self, key: str) -> tuple[int, str | None]:
        head = self.call("read the checksum of", key, self.client.head_object, Bucket=self.bucket,
                         Key=self.key_of(key), ChecksumMode="ENABLED")
        checksum = head.get("ChecksumSHA256")
        # A multipart object's checksum is of its parts' checksums ("...-N"): not the object's sha256.
        digest = base64.b64decode(checksum).hex() if checksum and "-" not in checksum else None
        return head["ContentLength"], digest

    def pending_uploads(self, prefix: str) -> list[PendingUpload]:
        found = []
        base = self._listing_prefix(prefix)
        kwargs = {"Bucket": self.bucket, "Prefix": base}
        while True:
            page = self.call("list the multipart uploads of", prefix, self.client.list_multipart_uploads, **kwargs)
            for upload in page.get("Uploads", []):
                if upload["Key"].startswith(base):  # never another prefix's, even from a store that ignores Prefix
                    found.append(PendingUpload(self._rel(upload["Key"]), upload["UploadId"],
                                               upload["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                return found
            # Pages continue after a (key, upload id) pair: several uploads may share a key.
            kwargs.update(KeyMarker=page["NextKeyMarker"], UploadIdMarker=page.get("NextUploadIdMarker", ""))

    def abort_upload(self, upload: PendingUpload) -> None:
        with contextlib.suppress(ObjectMissing):  # NoSuchUpload: finished or aborted meanwhile
            self.call("abort the upload of", upload.key, self.client.abort_multipart_upload, Bucket=self.bucket,
                      Key=self.key_of(upload.key), UploadId=upload.upload_id)


def open_store(url: str | None = None, *, create: bool = True, timeout_s: float = 5.0, retries: int = 3,
               part_bytes: int = 8 * 1024 * 1024) -> Store:
    """Open the store a URL names.

    Args:
        url: `file:///abs/path`, `file://./relative`, a plain path, or
            `s3://bucket/prefix`. None or '' means ./rewind-data.
        create: create a file:// root that does not exist yet.
        timeout_s: S3 connect/read timeout per request.
        retries: S3 attempts per request.
        part_bytes: S3 multipart part size.

    Raises:
        InvalidArgument: an unsupported scheme or a malformed URL.
    """
    url = url or DEFAULT_ROOT
    if "://" not in url:
        return FileStore(url, create=create)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        # file:///abs is standard; file://./rel and file://rel are accepted for convenience.
        path = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
        if not path:
            raise InvalidArgument(f"store: {url!r} has no path; use file:///absolute/path or file://./relative")
        return FileStore(path, create=create)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, timeout_s=timeout_s, retries=retries, part_bytes=part_bytes)
    raise InvalidArgument(f"store: unsupported URL {url!r}; use file:///path or s3://bucket/prefix")


def age_s(obj: ObjectInfo) -> float:
    """Seconds since an object was last modified."""
    return time.time() - obj.modified
