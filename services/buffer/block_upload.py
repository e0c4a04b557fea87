"""Blocks between the buffer service and the store, through presigned URLs the checkpoint service grants.

UploadBlocks: take the caller's grants, PUT each block to the store.

The caller (the checkpoint service) keeps the store's credentials and answers
BlocksNeeded with one presigned PUT per block. Every grant is checked before
the first byte leaves: exactly one per needed block, and each URL's host:port
in this service's store_endpoints setting (rewind.endpoints, the matcher
every outbound dial uses). A refused grant fails the stream before any
connection is made, so a caller can make this service dial only the stores
its operator allowed.

Restore: a block message may carry a presigned GET (`fetch`); the buffer
service downloads the block itself, from an allowed host, and the loader
checks its size and sha256 as for streamed bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from rewind import presigned
from rewind.buffer.v1 import buffer_pb2
from rewind.errors import DataLoss, InvalidArgument, NotFound
from rewind_buffer.block_stream import BlockStart
from rewind_buffer.blocks import BlockLoader

SETTING = "store_endpoints"


class GrantedUploads:
    """A BlockSink that PUTs each block to the URL the caller granted for it.

    Args:
        requests: the rest of the UploadBlocks request stream (after `start`).
        allowed: the store_endpoints setting.
        timeout_s: socket timeout of each PUT (store_timeout_s).
    """

    def __init__(self, requests: Iterator[buffer_pb2.UploadBlocksRequest], allowed: tuple[str, ...],
                 timeout_s: float) -> None:
        self.requests = requests
        self.allowed = allowed
        self.timeout_s = timeout_s
        self._grants: dict[str, tuple[presigned.Grant, str]] = {}

    def expect(self, needed: tuple[BlockStart, ...]) -> None:
        """Wait for the caller's grants and check them all, before any upload."""
        request = next(self.requests, None)
        if request is None or request.WhichOneof("item") != "grants":
            raise InvalidArgument("grants: the message after BlocksNeeded must be the BlockGrants answering it")
        names = {block.sha256 for block in needed}
        for i, granted in enumerate(request.grants.grants):
            field = f"grants.grants[{i}]"
            if granted.sha256 not in names:
                raise InvalidArgument(f"{field}.sha256: {granted.sha256[:64]!r} is not a block BlocksNeeded named")
            if granted.sha256 in self._grants:
                raise InvalidArgument(f"{field}.sha256: block {granted.sha256} is granted twice")
            grant = presigned.Grant(granted.url, dict(granted.headers))
            presigned.check_grant(grant, self.allowed, field, SETTING)
            self._grants[granted.sha256] = (grant, field)
        missing = sorted(names - set(self._grants))
        if missing:
            raise InvalidArgument(f"grants: no grant for block {missing[0]} ({len(missing)} missing); "
                                  "grant every block BlocksNeeded names")

    def put(self, block: BlockStart, pieces: Iterable[bytes | memoryview]) -> None:
        """PUT one block to its grant's URL."""
        grant, field = self._grants[block.sha256]
        presigned.put(grant, block.size, pieces, allowed=self.allowed, field_name=field, setting=SETTING,
                      timeout_s=self.timeout_s)


class BlockFetcher:
    """Downloads a Restore's blocks from the presigned GETs it carries.

    Args:
        allowed: the store_endpoints setting.
        timeout_s: socket timeout of each GET (store_timeout_s).
    """

    def __init__(self, allowed: tuple[str, ...], timeout_s: float) -> None:
        self.allowed = allowed
        self.timeout_s = timeout_s

    def fetch(self, granted: buffer_pb2.BlockGrant, loader: BlockLoader, field: str) -> None:
        """Feed one block's bytes from the store into its loader, and finish it (checking size and sha256)."""
        grant = presigned.Grant(granted.url, dict(granted.headers))
        try:
            for chunk in presigned.get(grant, allowed=self.allowed, field_name=field, setting=SETTING,
                                       timeout_s=self.timeout_s):
                loader.feed(chunk)
            loader.finish()
        except NotFound:
            raise DataLoss(f"{field}: block {loader.sha256} is missing from the store") from None
        except DataLoss as exc:
            raise DataLoss(f"{field}: block {loader.sha256} from the store: {exc.message}") from None
