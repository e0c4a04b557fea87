"""The buffer service's settings, and the settings of one buffer.

`rewind buffer serve` takes every field of `BufferServiceSettings` as a flag,
a REWIND_<FIELD> variable or a key of its TOML file, which keeps the seed's
`cfg/default.toml` layout: the four buffer keys under `[config]`, the
service's own under `[service]` (`rewind buffer serve --print-config` writes
the whole file with its defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from rewind import addresses
from rewind.errors import InvalidArgument
from rewind.names import check_name
from rewind_runtime.server_settings import ServerSettings
from rewind_runtime.settings import Settings, render_toml, setting

STORAGE_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class BufferSettings(Settings):
    """Capacity and sampling settings of one buffer (the seed's `[config]`)."""

    buffer_size: int = setting(1_000_000, "capacity in transitions", minimum=1)
    batch_size: int = setting(256, "sequences per batch", minimum=1)
    min_history: int = setting(100_000, "transitions stored before sampling is allowed", minimum=0)
    horizon: int = setting(3, "batches hold horizon+1 observations", minimum=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.min_history > self.buffer_size:
            raise InvalidArgument(f"min_history: {self.min_history} exceeds buffer_size {self.buffer_size}; "
                                  "the buffer could never become ready")
        if self.horizon + 1 > self.buffer_size:
            raise InvalidArgument(f"horizon: {self.horizon}+1 steps do not fit in buffer_size {self.buffer_size}")


@dataclass(frozen=True)
class BufferServiceSettings(ServerSettings, BufferSettings):
    """Everything `rewind buffer serve` needs; the four buffer keys are the defaults of every buffer."""

    FILE_TABLES = {"config": tuple(f.name for f in fields(BufferSettings))}
    DEFAULT_TABLE = "service"

    port: int = setting(addresses.BUFFER_PORT, "TCP port (0 picks a free one)", minimum=0, maximum=65535)
    buffers: tuple[str, ...] = setting(("buffer", "test_buffer"), "buffers created at start (CreateBuffer adds more)")
    storage_device: str = setting("auto", "where storage lives: auto (CUDA when 2.5x the storage fits), cpu or cuda",
                                  choices=STORAGE_DEVICES)
    seed: int = setting(1, "seeds each buffer's sampling generator")
    torch_threads: int = setting(1, "torch intra-op threads; gRPC threads already run calls in parallel "
                                    "(0: detect)", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.buffers:
            check_buffer_name(name)

    @property
    def buffer_defaults(self) -> BufferSettings:
        """The settings a buffer gets unless CreateBuffer says otherwise."""
        return BufferSettings(**{f.name: getattr(self, f.name) for f in fields(BufferSettings)})


def check_buffer_name(name: str) -> str:
    """Return `name` if it is a valid buffer name (rewind.names' rule), else raise InvalidArgument."""
    if not name:
        raise InvalidArgument("buffer: a buffer name is required (e.g. \"buffer\" or \"test_buffer\")")
    return check_name(name, "buffer")


def default_config_text() -> str:
    """The configuration file with every default, as `--print-config` writes it."""
    return render_toml(BufferServiceSettings, "Rewind buffer service defaults. Copy this file, edit it, and pass it "
                                              "with\n`rewind buffer serve --config my.toml`; flags override the file.")
