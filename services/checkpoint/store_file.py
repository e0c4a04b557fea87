"""The file:// backend of the store protocol (store_protocol.py): a directory on a local or mounted file system.

    store = FileStore("/data/rewind")        # or open_store("file:///data/rewind")

The file store never follows a symbolic link below its root, and never reads
anything but a regular file. Every key is opened one name at a time from a
descriptor of the root, with O_NOFOLLOW, and every change (mkdir, create,
rename, unlink, rmdir) is made relative to the descriptor of the folder that
was opened that way. So a link planted anywhere in the tree, even one swapped
in while a call runs, can neither take a read, write or delete outside the
root nor redirect one inside it:

- a key that is, or passes through, a link is refused with PERMISSION_DENIED
  (the message names the key, never where the link points);
- listings (and so the staging sweep and retention) skip links and other
  non-regular files: they are not objects of this store.

The root itself was resolved when the store opened, so a root reached
through a link (/data -> /mnt/disk) is fine.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from rewind.errors import InvalidArgument, PermissionDenied, ResourceExhausted, StoreUnavailable
from rewind_checkpoint.store_protocol import ObjectInfo, ObjectMissing, ObjectWriter, Store, StoreOptions

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

    @classmethod
    def from_url(cls, url: str, options: StoreOptions) -> FileStore:
        """`file:///abs/path` (standard), or `file://./relative` and `file://relative` (for convenience)."""
        parsed = urlparse(url)
        path = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
        if not path:
            raise InvalidArgument(f"store: {url!r} has no path; use file:///absolute/path or file://./relative")
        return cls(path, create=options.create)

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

    def checksum_of(self, key: str) -> tuple[int, str | None]:
        # A file keeps no checksum; its size comes from the file itself, opened without following a link.
        self.check()
        with self.errors("read", self.path_of(key)), self._open_file(key) as f:
            return os.fstat(f.fileno()).st_size, None

    def list(self, prefix: str) -> list[ObjectInfo]:
        self.check()
        # Walk the folder a prefix ending in '/' names, else the folder its last name is in: 'a/r' is
        # a/r/... and a/rx/... alike. Keys are filtered below.
        parts = self.parts(prefix.rstrip("/"))
        base = parts if prefix.endswith("/") else parts[:-1]
        with self.errors("list", self.path_of(prefix)), self.folder(base, prefix) as fd:
            return [] if fd is None else self._walk(fd, base, prefix)

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
