"""What a buffer hands out: a batch, its statistics, and a consistent copy of its state for snapshots.

Plain data, shared by the buffer (rewind_buffer.episode_buffer), its snapshots (snapshot, snapshot_check,
block_stream) and captures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from rewind_buffer.blocks import BlockMap, Sealed
from rewind_buffer.captures import RowCapture
from rewind_buffer.origins import WriterStats
from rewind_buffer.rate_limiter import LimiterState, LimiterStats
from rewind_buffer.schema import EpisodeSchema
from rewind_buffer.settings import BufferSettings

# Buffer settings later releases added, with the value that means "as before" (left out of snapshots then).
LATER_SETTINGS = {"max_episode_length": 0, "samples_per_insert": 0.0, "min_size_to_sample": 0, "error_buffer": "",
                  "inserts_wait": True}


@dataclass(frozen=True)
class Batch:
    """A batch in TD-MPC2's layout (time-major)."""

    obs: torch.Tensor  # (H+1, B, *obs_shape)
    action: torch.Tensor  # (H, B, *action_shape)
    reward: torch.Tensor  # (H, B, 1)
    done: torch.Tensor  # (H, B, 1)
    sequence_number: int
    sampleable_starts: int = 0    # what the sample was drawn from (a sharded client weighs shards by it)
    sampleable_episodes: int = 0


@dataclass(frozen=True)
class BufferStats:
    """What GetStats reports about one buffer."""

    name: str
    settings: BufferSettings
    transitions: int
    episodes: int
    ready: bool
    device: str                    # "" until the first episode allocates the storage
    bytes: int
    episodes_added: int
    episodes_evicted: int
    batches_sampled: int
    schema: EpisodeSchema | None
    limiter: LimiterStats | None = None
    sampleable_starts: int = 0
    sampleable_episodes: int = 0
    generation: int = 0
    writers: tuple[WriterStats, ...] = ()  # where the episodes came from, per writer (rewind_buffer.origins)


@dataclass(frozen=True)
class BufferState:
    """A consistent copy of a buffer: its description (JSON in a snapshot's header) and its tensors.

    From export_state() without copy=True, the storage columns are CapturedColumns of `rows` (a RowCapture),
    read as snapshot.encode streams them; release() (or streaming them to the end) lets the buffer forget it.
    """

    name: str
    settings: BufferSettings
    seed: int
    storage_device: str            # the preference: auto, cpu or cuda
    device_type: str | None        # where the storage was (None: never allocated)
    schema: EpisodeSchema | None
    episodes_added: int
    batches_sampled: int
    transitions: int
    writer: dict                   # EpisodeWriter.state_dict()
    tensors: dict[str, torch.Tensor]  # or CapturedColumns of `rows`, for the storage columns
    limiter: LimiterState | None = None  # the rate limiter's settings and counts (None: no limiter)
    generation: int = 0            # the newest run generation that wrote to it (the fence against older writers)
    origins: dict | None = None    # Origins.to_json(): where each stored episode came from (None: unattributed)
    rows: RowCapture | None = field(default=None, compare=False, repr=False)
    # The blocks of the capture point (None for a copy, or a buffer without storage): what SnapshotBlocks sends.
    blocks: Sealed | None = field(default=None, compare=False, repr=False)
    block_map: BlockMap | None = field(default=None, compare=False, repr=False)

    def release(self) -> None:
        """Stop the copy-before-overwrite of a capture not to be streamed (streaming it to the end does this too)."""
        if self.rows is not None:
            self.rows.release()

    def header(self) -> dict:
        """The JSON-able description (everything but the tensors).

        What later releases added (a rate limiter, a generation, the limiter's settings, origins) is written only
        when it differs from what a buffer without it would be, so that such a buffer's snapshot stays
        the one earlier releases wrote and read.
        """
        later = {name: value for name, value in asdict(self.settings).items()
                 if name in LATER_SETTINGS and value != LATER_SETTINGS[name]}
        settings = {**{k: v for k, v in asdict(self.settings).items() if k not in LATER_SETTINGS}, **later}
        header = {"name": self.name, "settings": settings, "seed": self.seed,
                  "storage_device": self.storage_device, "device_type": self.device_type,
                  "schema": self.schema.to_json() if self.schema is not None else None,
                  "episodes_added": self.episodes_added, "batches_sampled": self.batches_sampled,
                  "transitions": self.transitions, "writer": self.writer}
        if self.limiter is not None:
            header["limiter"] = self.limiter.to_json()
        if self.generation:
            header["generation"] = self.generation
        if self.origins is not None:
            header["origins"] = self.origins
        return header
