"""The buffer service's settings, and the settings of one buffer.

`rewind buffer serve` takes every field of `BufferServiceSettings` as a flag,
a REWIND_<FIELD> variable or a key of its TOML file, which keeps the seed's
`cfg/default.toml` layout: the four buffer keys under `[config]`, the
service's own under `[service]` (`rewind buffer serve --print-config` writes
the whole file with its defaults).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from rewind import addresses
from rewind.endpoints import LOOPBACK
from rewind.errors import InvalidArgument
from rewind.names import check_name
from rewind_buffer.rate_limiter import LimiterSettings
from rewind_runtime.server_settings import ServerSettings
from rewind_runtime.settings import Settings, render_toml, setting

STORAGE_DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class BufferSettings(Settings):
    """Capacity and sampling settings of one buffer (the seed's `[config]`)."""

    buffer_size: int = setting(1_000_000, "capacity in transitions", minimum=1)
    # Upper bounds: a batch is (horizon+1) x batch_size rows gathered at once, and beyond these it
    # would only fail later, in a sample's allocation or its message size.
    batch_size: int = setting(256, "sequences per batch", minimum=1, maximum=65_536)
    min_history: int = setting(100_000, "transitions stored before sampling is allowed", minimum=0)
    horizon: int = setting(3, "batches hold horizon+1 observations", minimum=1, maximum=1_000)
    max_episode_length: int = setting(0, "longest episode the buffer takes, in transitions (0: up to buffer_size); "
                                         "the rate limiter's deadlock check counts on it", minimum=0)
    # The rate limiter (rewind_buffer.rate_limiter): Reverb's SampleToInsertRatio over transitions and sequences.
    samples_per_insert: float = setting(0.0, "rate limiter: sequences sampled per transition inserted (0: no ratio; "
                                             "with min_size_to_sample alone, samples just wait for that size)",
                                        minimum=0)
    min_size_to_sample: int = setting(0, "rate limiter: transitions stored before a sample may go (0 with "
                                         "samples_per_insert 0: no limiter)", minimum=0)
    error_buffer: str = setting("", "rate limiter: X, a window of +-X around samples_per_insert x "
                                    "min_size_to_sample, or MIN,MAX for the window itself; needed with "
                                    "samples_per_insert")
    inserts_wait: bool = setting(True, "rate limiter: inserts wait when they run ahead of samples (off: only "
                                       "samples wait, for a process that both collects and learns)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_episode_length > self.buffer_size:
            raise InvalidArgument(f"max_episode_length: {self.max_episode_length:,} exceeds buffer_size "
                                  f"{self.buffer_size:,}; no episode that long fits")
        self.rate_limiter()  # refuses settings that could deadlock, naming the fields
        if self.min_history > self.buffer_size:
            raise InvalidArgument(f"min_history: {self.min_history} exceeds buffer_size {self.buffer_size}; "
                                  "the buffer could never become ready")
        if self.horizon + 1 > self.buffer_size:
            raise InvalidArgument(f"horizon: {self.horizon}+1 steps do not fit in buffer_size {self.buffer_size}")


    @property
    def longest_episode(self) -> int:
        """The most transitions one episode may bring."""
        return self.max_episode_length or self.buffer_size

    def rate_limiter(self) -> LimiterSettings | None:
        """The limiter these settings ask for (None: no limiter).

        Raises:
            InvalidArgument: malformed, or settings that could deadlock (naming the fields).
        """
        if not self.samples_per_insert:
            if self.error_buffer:
                raise InvalidArgument("error_buffer: given without samples_per_insert; give both, or neither")
            return LimiterSettings.min_size(self.min_size_to_sample) if self.min_size_to_sample else None
        if not self.error_buffer:
            raise InvalidArgument("error_buffer: needed with samples_per_insert: X for a window of +-X around "
                                  "samples_per_insert x min_size_to_sample, or MIN,MAX")
        limiter = LimiterSettings.sample_to_insert_ratio(self.samples_per_insert, self.min_size_to_sample,
                                                         parse_error_buffer(self.error_buffer), self.inserts_wait)
        limiter.check(batch_size=self.batch_size, longest_episode=self.longest_episode,
                      buffer_size=self.buffer_size)
        return limiter


def parse_error_buffer(text: str) -> float | tuple[float, float]:
    """"X" -> X; "MIN,MAX" -> (MIN, MAX).

    Raises:
        InvalidArgument: anything else.
    """
    try:
        parts = [float(part) for part in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] >= 0 and math.isfinite(parts[0]):
        return parts[0]
    if len(parts) == 2 and all(math.isfinite(p) for p in parts):
        return parts[0], parts[1]
    raise InvalidArgument(f"error_buffer: {text!r:.60} is neither a number X >= 0 nor MIN,MAX")


@dataclass(frozen=True)
class Limits:
    """What all of a service's buffers may take together (BufferRegistry enforces it).

    Attributes:
        max_buffers: buffers at once.
        max_transitions: the sum of every buffer's buffer_size (reserved at creation).
        max_storage_bytes: the sum of every buffer's storage (allocated at its first
            episode, when the schema fixes the bytes per transition); 0: no limit but
            what allocation allows.
    """

    max_buffers: int = 16
    max_transitions: int = 50_000_000
    max_storage_bytes: int = 32_768 * 2**20


@dataclass(frozen=True)
class BufferServiceSettings(ServerSettings, BufferSettings):
    """Everything `rewind buffer serve` needs; the four buffer keys are the defaults of every buffer."""

    FILE_TABLES = {"config": tuple(f.name for f in fields(BufferSettings))}
    DEFAULT_TABLE = "service"

    port: int = setting(addresses.BUFFER_PORT, "TCP port (0 picks a free one)", minimum=0, maximum=65535)
    http_port: int = setting(addresses.BUFFER_HTTP_PORT, "HTTP port for /metrics (-1: none, 0: a free one; "
                             "left at its default, also a free one when port is 0 or it is taken)",
                             minimum=-1, maximum=65535)
    buffers: tuple[str, ...] = setting(("buffer", "test_buffer"), "buffers created at start (CreateBuffer adds more)")
    storage_device: str = setting("auto", "where storage lives: auto (CUDA when 2.5x the storage fits), cpu or cuda",
                                  choices=STORAGE_DEVICES)
    seed: int = setting(1, "seeds each buffer's sampling generator")
    torch_threads: int = setting(1, "torch intra-op threads; gRPC threads already run calls in parallel "
                                    "(0: detect)", minimum=0)
    max_buffers: int = setting(16, "most buffers at once (CreateBuffer, ResetBuffer and Restore of a new name)",
                               minimum=1)
    max_transitions: int = setting(50_000_000, "total buffer_size all buffers may reserve together", minimum=1)
    max_storage_mb: int = setting(32_768, "total storage all buffers may allocate, MiB (0: what allocation allows)",
                                  minimum=0)
    max_captures: int = setting(2, "captures per buffer waiting to be streamed; a new one drops the oldest",
                                minimum=1)
    capture_ttl_s: float = setting(600.0, "seconds a capture waits to be streamed before it is dropped", above=0)
    max_capture_copy_mb: int = setting(1024, "MiB a capture may copy aside while writes overwrite rows it has not "
                                             "streamed yet; past it the capture is dropped", minimum=1)
    snapshot_block_mb: int = setting(64, "MiB of rows at most in one content-addressed block of an incremental "
                                         "checkpoint (SnapshotBlocks); smaller blocks dedup finer but make more "
                                         "objects", minimum=1, maximum=1024)
    # UploadBlocks PUTs blocks to URLs a caller hands in: only to these (rewind.endpoints).
    store_endpoints: tuple[str, ...] = setting(
        LOOPBACK, "stores UploadBlocks may upload checkpoint blocks to (presigned URLs from the checkpoint "
        "service): host:port entries or patterns, e.g. minio:9000, s3.us-east-1.amazonaws.com:443, "
        "*.amazonaws.com:443; the default allows loopback only")
    store_timeout_s: float = setting(60.0, "socket timeout of each block upload to the store, seconds", above=0)
    limiter_max_wait_s: float = setting(60.0, "longest a call waits for a rate limiter, seconds, when its deadline is "
                                              "later or it has none (streams); then DEADLINE_EXCEEDED", minimum=0)
    limiter_max_waiting: int = setting(0, "unary calls (inserts, samples) waiting for rate limiters at once; more "
                                          "get RESOURCE_EXHAUSTED, so waits never take every worker (0: a quarter "
                                          "of workers, at least 1)", minimum=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self.buffers:
            check_buffer_name(name)
        if len(self.buffers) > self.max_buffers:
            raise InvalidArgument(f"max_buffers: {self.max_buffers} is fewer than the {len(self.buffers)} buffers "
                                  "created at start (buffers); raise max_buffers or name fewer buffers")
        if self.limiter_max_waiting and self.limiter_max_waiting >= self.workers:
            raise InvalidArgument(f"limiter_max_waiting: {self.limiter_max_waiting} must be below workers "
                                  f"({self.workers}), or waiting calls could take every worker")
        reserved = self.buffer_size * len(self.buffers)
        if reserved > self.max_transitions:
            raise InvalidArgument(
                f"max_transitions: {self.max_transitions:,} is below the {reserved:,} transitions the buffers "
                f"created at start reserve ({len(self.buffers)} x buffer_size {self.buffer_size:,}); raise "
                "max_transitions or lower buffer_size")

    @property
    def limiter_waiting_slots(self) -> int:
        """Unary calls that may wait for rate limiters at once."""
        return self.limiter_max_waiting or max(1, self.workers // 4)

    @property
    def limits(self) -> Limits:
        """The service-wide budget every buffer is admitted against."""
        return Limits(max_buffers=self.max_buffers, max_transitions=self.max_transitions,
                      max_storage_bytes=self.max_storage_mb * 2**20)

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
