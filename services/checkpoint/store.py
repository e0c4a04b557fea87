"""Object storage behind a URL: the store every other module opens, and the names it imports.

    store = open_store("s3://my-bucket/rewind")     # endpoint etc. from AWS_* env
    with store.open_writer("a/r/step-0000000100/model.pt") as w:
        w.write(data)
    store.get("a/r/step-0000000100/model.pt")

The protocol every backend implements, with each operation's contract, is in
store_protocol.py; one module per backend (store_file.py, store_s3.py) and one
entry in BACKENDS below make a URL scheme openable. This module re-exports
them all, so `from rewind_checkpoint.store import ...` is the one import path.
"""

from __future__ import annotations

from urllib.parse import urlparse

from rewind.errors import InvalidArgument
from rewind_checkpoint.store_file import FileStore
from rewind_checkpoint.store_protocol import (
    ObjectInfo,
    ObjectMissing,
    ObjectWriter,
    PendingUpload,
    Store,
    StoreOptions,
    age_s,
)
from rewind_checkpoint.store_s3 import MAX_SINGLE_PUT_BYTES, MIN_PART_BYTES, S3Store

__all__ = [
    "BACKENDS",
    "DEFAULT_ROOT",
    "MAX_SINGLE_PUT_BYTES",
    "MIN_PART_BYTES",
    "FileStore",
    "ObjectInfo",
    "ObjectMissing",
    "ObjectWriter",
    "PendingUpload",
    "S3Store",
    "Store",
    "StoreOptions",
    "age_s",
    "open_store",
]

DEFAULT_ROOT = "./rewind-data"

# URL scheme -> the backend that opens it (Store.from_url).
BACKENDS: dict[str, type[Store]] = {
    "file": FileStore,
    "s3": S3Store,
}


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
    options = StoreOptions(create=create, timeout_s=timeout_s, retries=retries, part_bytes=part_bytes)
    if "://" not in url:
        return FileStore(url, create=create)
    backend = BACKENDS.get(urlparse(url).scheme)
    if backend is None:
        raise InvalidArgument(f"store: unsupported URL {url!r}; use file:///path or s3://bucket/prefix")
    return backend.from_url(url, options)
