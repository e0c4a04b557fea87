"""EpisodeBuffer: one named replay buffer, after TD-MPC2's `Buffer`.

torchrl does the work: a LazyTensorStorage (allocated from the first episode),
a SliceSampler over the `episode` column with strict_length (sequences never
cross an episode boundary), and the EpisodeWriter (whole-episode FIFO). This
class adds schema checks, the CUDA-or-CPU choice, counters and a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler

from rewind.errors import FailedPrecondition
from rewind_buffer.config import BufferSettings
from rewind_buffer.schema import FIELDS, EpisodeSchema, validate_episodes
from rewind_buffer.writer import TRAJ_KEY, EpisodeWriter

log = logging.getLogger(__name__)

# The seed's heuristic: CUDA only when 2.5x the storage fits in free memory.
CUDA_HEADROOM = 2.5


class EpisodeSliceSampler(SliceSampler):
    """SliceSampler minus a per-sample gather of every column.

    torchrl's `_finalize_index` reads `storage[index]` on each sample only to
    emit an init marker this buffer never uses; skipping it halves the cost of
    a sample. With a truncated_key or padding, torchrl's own path runs.
    """

    def _finalize_index(self, *, index, num_slices, seq_length, target_seq_length, mask_flat, storage):
        if self.truncated_key is None and mask_flat is None:
            return index.to(torch.long).unbind(-1), {}
        return super()._finalize_index(
            index=index, num_slices=num_slices, seq_length=seq_length,
            target_seq_length=target_seq_length, mask_flat=mask_flat, storage=storage,
        )


@dataclass(frozen=True)
class Batch:
    """A batch in TD-MPC2's layout (time-major)."""

    obs: torch.Tensor  # (H+1, B, *obs_shape)
    action: torch.Tensor  # (H, B, *action_shape)
    reward: torch.Tensor  # (H, B, 1)
    done: torch.Tensor  # (H, B, 1)
    sequence_number: int


def choose_storage_device(required_bytes: int, preference: str = "auto") -> torch.device:
    """Pick the storage device: the seed's 2.5x rule under "auto".

    Args:
        required_bytes: bytes the full-capacity storage needs.
        preference: "auto", "cpu" or "cuda".

    Raises:
        FailedPrecondition: "cuda" was asked for but is unavailable or too small.
    """
    if preference == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if preference == "cuda":
            raise FailedPrecondition("storage_device: cuda was requested but no CUDA device is available")
        return torch.device("cpu")
    free, _ = torch.cuda.mem_get_info()
    if CUDA_HEADROOM * required_bytes < free:
        return torch.device("cuda", torch.cuda.current_device())
    if preference == "cuda":
        raise FailedPrecondition(
            f"storage_device: cuda needs {CUDA_HEADROOM} x {required_bytes / 2**30:.2f} GiB "
            f"but only {free / 2**30:.2f} GiB is free; lower buffer_size or use auto"
        )
    return torch.device("cpu")


class EpisodeBuffer:
    """Stores whole episodes; samples contiguous sequences in TD-MPC2's layout."""

    def __init__(
        self,
        name: str,
        settings: BufferSettings,
        *,
        storage_device: str = "auto",
        seed: int = 1,
    ) -> None:
        self.name = name
        self.settings = settings
        self.storage_device_preference = storage_device
        self.seed = seed
        self.lock = threading.RLock()
        self.schema: EpisodeSchema | None = None
        self.device: torch.device | None = None
        self.episodes_added = 0
        self.batches_sampled = 0
        self._writer = EpisodeWriter()
        self._rb: ReplayBuffer | None = None
        self._generator: torch.Generator | None = None

    # -- state ---------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.settings.buffer_size

    @property
    def num_eps(self) -> int:
        return self._writer.num_episodes

    @property
    def transitions(self) -> int:
        return self._writer.transitions

    @property
    def episodes_evicted(self) -> int:
        return self._writer.evicted

    @property
    def storage_bytes(self) -> int:
        if self._rb is None:
            return 0
        storage = self._rb.storage._storage
        return sum(t.numel() * t.element_size() for t in storage.values(include_nested=True, leaves_only=True))

    def ready(self) -> bool:
        """True once min_history transitions (and at least one episode) are stored."""
        return self.num_eps > 0 and self.transitions >= self.settings.min_history

    def require_ready(self) -> None:
        """Raise FailedPrecondition unless ready()."""
        if not self.ready():
            raise FailedPrecondition(
                f"buffer {self.name!r} is not ready: {self.transitions} of "
                f"min_history={self.settings.min_history} transitions stored; add more episodes first"
            )

    # -- writing -------------------------------------------------------------

    def add(self, episode: Mapping[str, torch.Tensor]) -> int:
        """Validate and store one episode of shape (L, ...); returns num_eps.

        Raises:
            InvalidArgument: the episode is malformed; nothing is stored then.
        """
        return self._store([episode], ["episode"])

    def load(self, episodes: Sequence[Mapping[str, torch.Tensor]]) -> int:
        """Validate every episode first, then store them all; returns num_eps.

        Raises:
            InvalidArgument: any episode is malformed; nothing is stored then.
        """
        return self._store(episodes, [f"episodes[{i}]" for i in range(len(episodes))])

    def _store(self, episodes: Sequence[Mapping[str, torch.Tensor]], names: list[str]) -> int:
        with self.lock:
            schema = self.schema
            for episode, where in zip(episodes, names, strict=True):
                validate_episodes(
                    episode, schema=schema, horizon=self.settings.horizon, capacity=self.capacity, where=where
                )
                if schema is None:
                    schema = EpisodeSchema.from_tensors(episode)
            if not episodes:
                return self.num_eps
            if self._rb is None:
                self._init_storage(schema)
            self._write(episodes)
            return self.num_eps

    def _init_storage(self, schema: EpisodeSchema) -> None:
        # Episode ids are int64; one column beside the four fields.
        required = (schema.step_bytes + 8) * self.capacity
        device = choose_storage_device(required, self.storage_device_preference)
        log.info(
            "buffer %r: capacity %s transitions, storage %.3f GB on %s",
            self.name, f"{self.capacity:,}", required / 1e9, device,
        )
        self.schema = schema
        self.device = device
        self._generator = torch.Generator(device=device).manual_seed(self.seed)
        self._rb = ReplayBuffer(
            storage=LazyTensorStorage(self.capacity, device=device),
            sampler=EpisodeSliceSampler(
                num_slices=self.settings.batch_size,
                traj_key=TRAJ_KEY,
                end_key=None,
                truncated_key=None,
                strict_length=True,
                cache_values=True,
            ),
            writer=self._writer,
            batch_size=self.settings.batch_size * (self.settings.horizon + 1),
            generator=self._generator,
        )

    def _write(self, episodes: Sequence[Mapping[str, torch.Tensor]]) -> None:
        # One extend for the lot: the writer places them and batches the copies.
        lengths = [episode["obs"].shape[0] for episode in episodes]
        data = {k: torch.cat([episode[k] for episode in episodes]) for k in FIELDS}
        ids = torch.arange(self.episodes_added, self.episodes_added + len(episodes))
        data[TRAJ_KEY] = torch.repeat_interleave(ids, torch.tensor(lengths))
        self._rb.extend(TensorDict(data, batch_size=[sum(lengths)]))
        self.episodes_added += len(episodes)

    # -- sampling ------------------------------------------------------------

    def sample(self) -> Batch:
        """Sample batch_size sequences of horizon+1 steps.

        Raises:
            FailedPrecondition: fewer than min_history transitions are stored.
        """
        with self.lock:
            self.require_ready()
            # The sampler picks the slices (torchrl's SliceSampler, strict
            # length); gathering them time-major straight from the storage
            # columns skips ReplayBuffer.sample's generic TensorDict path and
            # the transpose-then-copy that TD-MPC2 does after it.
            (index,), _ = self._rb.sampler.sample(self._rb.storage, self._rb.batch_size)
            number = self.batches_sampled
            self.batches_sampled += 1
            steps = index.view(self.settings.batch_size, self.settings.horizon + 1).t()
            columns = self._rb.storage._storage
            after_first = steps[1:]
            return Batch(
                obs=columns.get("obs")[steps],
                action=columns.get("action")[after_first],
                reward=columns.get("reward")[after_first].unsqueeze(-1),
                done=columns.get("done")[after_first].unsqueeze(-1),
                sequence_number=number,
            )

    # -- snapshot support ----------------------------------------------------

    def export_state(self, expect_episodes_added: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
        """A consistent copy of everything a snapshot needs: (header, tensors).

        Args:
            expect_episodes_added: when > 0, the copy is refused unless exactly
                this many episodes have been added (checked under the lock).

        Raises:
            FailedPrecondition: the buffer has seen a different number of episodes.
        """
        with self.lock:
            if expect_episodes_added > 0 and expect_episodes_added != self.episodes_added:
                raise FailedPrecondition(
                    f"expect_episodes_added: buffer {self.name!r} has seen {self.episodes_added} episodes, "
                    f"not {expect_episodes_added}; the snapshot would not match the caller's step"
                )
            header = {
                "name": self.name,
                "settings": {
                    "buffer_size": self.settings.buffer_size,
                    "batch_size": self.settings.batch_size,
                    "min_history": self.settings.min_history,
                    "horizon": self.settings.horizon,
                },
                "seed": self.seed,
                "storage_device": self.storage_device_preference,
                "device_type": self.device.type if self.device is not None else None,
                "schema": self.schema.to_json() if self.schema is not None else None,
                "episodes_added": self.episodes_added,
                "batches_sampled": self.batches_sampled,
                "transitions": self.transitions,
                "writer": self._writer.state_dict(),
            }
            tensors: dict[str, torch.Tensor] = {}
            if self._rb is not None:
                storage = self._rb.storage
                used = len(storage)
                for key in (*FIELDS, TRAJ_KEY):
                    # clone: the snapshot streams after the lock is released.
                    tensors[key] = storage._storage.get(key)[:used].to("cpu", copy=True)
                tensors["generator_state"] = self._generator.get_state().to("cpu", copy=True)
            return header, tensors

    @classmethod
    def from_state(
        cls, name: str, header: dict, tensors: dict[str, torch.Tensor], *, storage_device: str | None = None
    ) -> EpisodeBuffer:
        """Rebuild a buffer from export_state()'s output (already checked)."""
        buffer = cls(
            name,
            BufferSettings(**header["settings"]),
            storage_device=storage_device or header["storage_device"],
            seed=int(header["seed"]),
        )
        buffer.episodes_added = int(header["episodes_added"])
        buffer.batches_sampled = int(header["batches_sampled"])
        if header["schema"] is None:
            return buffer
        buffer._init_storage(EpisodeSchema.from_json(header["schema"]))
        used = tensors[TRAJ_KEY].shape[0]
        data = TensorDict({k: tensors[k] for k in (*FIELDS, TRAJ_KEY)}, batch_size=[used])
        if used:
            buffer._rb.storage.set(torch.arange(used), data)
        buffer._writer.load_state_dict(header["writer"])
        state = tensors["generator_state"]
        if buffer.device.type == header["device_type"]:
            buffer._generator.set_state(state)
        else:
            # A CPU generator state cannot drive a CUDA generator (or back):
            # reseed from the sample count so the stream is still deterministic.
            log.warning("buffer %r restored on %s (was %s): sampling sequence reseeded",
                        name, buffer.device.type, header["device_type"])
            buffer._generator.manual_seed(buffer.seed + buffer.batches_sampled)
        return buffer

    def stats(self) -> dict:
        """Capacity, counters, readiness, device and bytes as a plain dict."""
        with self.lock:
            return {
                "name": self.name,
                "settings": self.settings,
                "transitions": self.transitions,
                "episodes": self.num_eps,
                "ready": self.ready(),
                "device": str(self.device) if self.device is not None else "",
                "bytes": self.storage_bytes,
                "episodes_added": self.episodes_added,
                "episodes_evicted": self.episodes_evicted,
                "batches_sampled": self.batches_sampled,
                "schema": self.schema,
            }
