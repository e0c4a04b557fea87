"""The checkpoint service's settings (command-line flags, with environment defaults)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from rewind.errors import InvalidArgument

DEFAULT_PORT = 50052
STORE_ENV = "REWIND_STORE"


@dataclass(frozen=True)
class CheckpointConfig:
    """Everything `serve()` needs.

    store: file:///path, s3://bucket/prefix or a plain path; default: $REWIND_STORE, else ./rewind-data.
    """

    store: str = ""
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_message_mb: int = 64
    grace_s: float = 10.0
    workers: int = 16
    # Uncommitted files older than this (and not being written) are removed.
    staging_max_age_s: float = 3600.0
    # How often the background sweep for stale staging runs.
    clean_interval_s: float = 600.0
    # Every S3 request: connect/read timeout and attempts. Together they bound
    # a store call (about 3 x 5 s plus back-off) below the SDK's 30 s deadline.
    store_timeout_s: float = 5.0
    store_retries: int = 3
    part_mb: int = 8
    # Deadline for pulling one buffer snapshot from the buffer service.
    buffer_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        checks = {
            "port": 0 <= self.port <= 65535,
            "max_message_mb": self.max_message_mb >= 1,
            "grace_s": self.grace_s >= 0,
            "workers": self.workers >= 1,
            "staging_max_age_s": self.staging_max_age_s >= 0,
            "clean_interval_s": self.clean_interval_s > 0,
            "store_timeout_s": self.store_timeout_s > 0,
            "store_retries": self.store_retries >= 1,
            "part_mb": self.part_mb >= 5,
            "buffer_timeout_s": self.buffer_timeout_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidArgument(f"{name}: {getattr(self, name)!r} is out of range")

    @property
    def store_url(self) -> str:
        return self.store or os.environ.get(STORE_ENV, "")

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    def replace(self, **changes) -> CheckpointConfig:
        """A copy with the given fields changed; None values are ignored (unset flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})
