"""The checkpoint service's settings: `rewind ckpt serve` flags, REWIND_* variables and config-file keys."""

from __future__ import annotations

from dataclasses import dataclass

from rewind import addresses
from rewind_checkpoint.dials import DEFAULT_BUFFER_ADDRESSES
from rewind_runtime.server_settings import ServerSettings
from rewind_runtime.settings import setting


@dataclass(frozen=True)
class CheckpointSettings(ServerSettings):
    """Everything `serve()` needs."""

    port: int = setting(addresses.CHECKPOINT_PORT, "TCP port (0 picks a free one)", minimum=0, maximum=65535)
    http_port: int = setting(addresses.CHECKPOINT_HTTP_PORT, "HTTP port for the training-history pages, their "
                             "JSON API and /metrics (-1: none, 0: a free one; left at its default, also a free "
                             "one when port is 0 or the default is taken)", minimum=-1, maximum=65535)
    store: str = setting("", "file:///path, s3://bucket/prefix or a plain path (default: ./rewind-data)")
    staging_max_age_s: float = setting(3600.0, "remove uncommitted uploads older than this, in seconds", minimum=0)
    clean_interval_s: float = setting(600.0, "seconds between sweeps for stale uploads", above=0)
    # Every S3 request: connect/read timeout and attempts. Together they bound
    # a store call (about 3 x 5 s plus back-off) below the SDK's 30 s deadline.
    store_timeout_s: float = setting(5.0, "S3 connect/read timeout per request, seconds", above=0)
    store_retries: int = setting(3, "S3 attempts per request", minimum=1)
    part_mb: int = setting(8, "S3 multipart part size in MiB", minimum=5)
    buffer_timeout_s: float = setting(600.0, "deadline for pulling or pushing one buffer snapshot, seconds",
                                      above=0)
    # Save and RestoreBuffers dial addresses that requests name: only these (see dials.py).
    buffer_addresses: tuple[str, ...] = setting(
        DEFAULT_BUFFER_ADDRESSES, "buffer services Save and RestoreBuffers may dial: host:port entries or "
        "patterns (buffer:50051, *.svc.cluster.local:50051, 127.0.0.1:*); never unix: sockets or schemes")
    # One trip for big bytes (rewind.presigned): the producer PUTs them to the store itself.
    direct_uploads: bool = setting(True, "on S3, let buffer services and clients upload blocks and large files "
                                   "straight to the store through presigned URLs (false: every byte comes "
                                   "through this service); file:// stores always take them through this service")
