"""Buffer settings and the service's TOML configuration file.

The file keeps the seed's `cfg/default.toml` layout: the four buffer keys live
under `[config]`; the service's own options live under `[service]`.

    [config]
    buffer_size = 1_000_000    # capacity in transitions
    batch_size = 256           # sequences per batch
    min_history = 100_000      # transitions before sampling is allowed
    horizon = 3                # batches hold horizon+1 observations

    [service]
    host = "127.0.0.1"
    port = 50051
    buffers = ["buffer", "test_buffer"]
    storage_device = "auto"    # "auto" (the 2.5x rule), "cpu" or "cuda"
    seed = 1
    max_message_mb = 64
    torch_threads = 1          # intra-op threads; 0 keeps torch's default
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from rewind.errors import InvalidArgument

BUFFER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
STORAGE_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class BufferSettings:
    """Capacity and sampling settings of one buffer (the seed's `[config]`)."""

    buffer_size: int = 1_000_000
    batch_size: int = 256
    min_history: int = 100_000
    horizon: int = 3

    def __post_init__(self) -> None:
        for name in ("buffer_size", "batch_size", "horizon"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgument(f"{name}: must be a positive integer, got {value!r}")
        if not isinstance(self.min_history, int) or self.min_history < 0:
            raise InvalidArgument(f"min_history: must be a non-negative integer, got {self.min_history!r}")
        if self.min_history > self.buffer_size:
            raise InvalidArgument(
                f"min_history: {self.min_history} exceeds buffer_size {self.buffer_size}; "
                "the buffer could never become ready"
            )
        if self.horizon + 1 > self.buffer_size:
            raise InvalidArgument(f"horizon: {self.horizon}+1 steps do not fit in buffer_size {self.buffer_size}")

    def replace(self, **overrides: Any) -> BufferSettings:
        """A copy with the given non-None values replaced (validated again)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything `rewind buffer serve` needs (the `[service]` table)."""

    settings: BufferSettings = field(default_factory=BufferSettings)
    host: str = "127.0.0.1"
    port: int = 50051
    buffers: tuple[str, ...] = ("buffer", "test_buffer")
    storage_device: str = "auto"
    seed: int = 1
    max_message_mb: int = 64
    grace_s: float = 10.0
    workers: int = 16
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.storage_device not in STORAGE_DEVICES:
            raise InvalidArgument(
                f"storage_device: {self.storage_device!r} is not one of {', '.join(STORAGE_DEVICES)}"
            )
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"port: {self.port} is not a TCP port")
        if self.torch_threads < 0:
            raise InvalidArgument(f"torch_threads: {self.torch_threads} is negative (0 keeps torch's default)")
        if not 1 <= self.max_message_mb <= 2047:
            raise InvalidArgument(f"max_message_mb: {self.max_message_mb} is outside 1..2047")
        for name in self.buffers:
            check_buffer_name(name)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    def replace(self, **overrides: Any) -> ServiceConfig:
        """A copy with the given non-None values replaced (validated again)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes)


def check_buffer_name(name: str) -> str:
    """Return `name` if it is a valid buffer name, else raise InvalidArgument."""
    if not name:
        raise InvalidArgument("buffer: a buffer name is required (e.g. \"buffer\" or \"test_buffer\")")
    if not BUFFER_NAME.fullmatch(name):
        raise InvalidArgument(
            f"buffer: {name!r} is not a valid name (letters, digits, '_', '.', '-'; at most 63 characters)"
        )
    return name


def default_config_text() -> str:
    """The packaged default configuration file, as text."""
    return resources.files("rewind_buffer").joinpath("default.toml").read_text()


def load_config(path: str | Path | None = None) -> ServiceConfig:
    """Read a TOML configuration file; None reads the packaged defaults.

    Args:
        path: the file to read.

    Returns:
        The validated configuration.

    Raises:
        InvalidArgument: unreadable file, unknown key or invalid value.
    """
    if path is None:
        text, source = default_config_text(), "default.toml"
    else:
        try:
            text, source = Path(path).read_text(), str(path)
        except OSError as exc:
            raise InvalidArgument(f"config: cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config: {source} is not valid TOML: {exc}") from None
    unknown_tables = set(data) - {"config", "service"}
    if unknown_tables:
        raise InvalidArgument(
            f"config: unknown table(s) {sorted(unknown_tables)} in {source}; expected [config] and [service]"
        )
    settings_keys = {f.name for f in dataclasses.fields(BufferSettings)}
    service_keys = {f.name for f in dataclasses.fields(ServiceConfig)} - {"settings"}
    cfg, svc = data.get("config", {}), data.get("service", {})
    for table, keys, allowed in (("config", cfg, settings_keys), ("service", svc, service_keys)):
        unknown = set(keys) - allowed
        if unknown:
            raise InvalidArgument(
                f"config: unknown key(s) {sorted(unknown)} in [{table}] of {source}; allowed: {sorted(allowed)}"
            )
    if "buffers" in svc:
        svc = {**svc, "buffers": tuple(svc["buffers"])}
    return ServiceConfig(settings=BufferSettings(**cfg), **svc)
