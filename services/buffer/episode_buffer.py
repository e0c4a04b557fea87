"""EpisodeBuffer: one named replay buffer, after TD-MPC2's `Buffer`.

torchrl does the work: a LazyTensorStorage (allocated from the first episode),
a SliceSampler over the `episode` column with strict_length (sequences never
cross an episode boundary), and the EpisodeWriter (whole-episode FIFO). This
class adds schema checks, the CUDA-or-CPU choice, counters and a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import torch
from tensordict import TensorDict
from torchrl.data import ReplayBuffer

from rewind.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    RewindError,
)
from rewind_buffer import torchrl_adapter
from rewind_buffer.blocks import DEFAULT_BLOCK_BYTES, BlockMap, row_bytes
from rewind_buffer.buffer_state import Batch, BufferState, BufferStats
from rewind_buffer.captures import RowCapture
from rewind_buffer.limiter_gate import LimiterGate
from rewind_buffer.origins import UNATTRIBUTED, Origin, Origins
from rewind_buffer.rate_limiter import INSERT, NO_WAIT, SAMPLE, RateLimiter, Wait
from rewind_buffer.schema import FIELDS, EpisodeSchema, validate_episodes
from rewind_buffer.settings import BufferSettings
from rewind_buffer.writer import TRAJ_KEY, EpisodeWriter

log = logging.getLogger(__name__)

# The seed's heuristic: CUDA only when 2.5x the storage fits in free memory.
CUDA_HEADROOM = 2.5


def storage_bytes_for(schema: EpisodeSchema, capacity: int) -> int:
    """Bytes a buffer of `capacity` transitions of `schema` allocates (the int64 episode column included)."""
    return (schema.step_bytes + 8) * capacity


# Called with a buffer and the bytes its storage is about to take; raises
# ResourceExhausted to refuse (the registry's storage budget).
StorageGuard = Callable[["EpisodeBuffer", int], None]


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


STALE_GENERATION = "STALE_GENERATION"  # the reason of a write refused for its older generation


class EpisodeBuffer:
    """Stores whole episodes; samples contiguous sequences in TD-MPC2's layout."""

    def __init__(
        self,
        name: str,
        settings: BufferSettings,
        *,
        storage_device: str = "auto",
        seed: int = 1,
        reserve_storage: StorageGuard | None = None,
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
        self._reserve_storage = reserve_storage
        self.reserved_bytes = 0  # the storage the registry has counted for this buffer
        self.block_map: BlockMap | None = None  # which stored rows are already in blocks (from the storage on)
        limiter = settings.rate_limiter()
        self.generation = 0
        self.origins = Origins()  # where each stored episode came from, and per-writer summaries
        self.gate = LimiterGate(self.lock, name, lambda: self.transitions,
                                RateLimiter(limiter) if limiter is not None else None)

    # -- state ---------------------------------------------------------------

    @property
    def limiter(self) -> RateLimiter | None:
        return self.gate.limiter

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
        return 0 if self._rb is None else torchrl_adapter.storage_bytes(self._rb.storage)

    @property
    def sampleable(self) -> tuple[int, int]:
        """(sequence starts, episodes) a sample draws from: every stored episode has horizon+1 steps or more,
        and its last `horizon` steps start no sequence."""
        return self.transitions - self.num_eps * self.settings.horizon, self.num_eps

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

    def add(self, episode: Mapping[str, torch.Tensor], wait: Wait = NO_WAIT, generation: int = 0,
            origin: Origin = UNATTRIBUTED) -> int:
        """Validate and store one episode of shape (L, ...); returns num_eps.

        Args:
            wait: how long the rate limiter may hold the insert back (default: not at all).
            generation: the run generation the writer belongs to (0: unstamped); see fence().
            origin: its writer, the writer's index and the policy version it was collected with (checked by
                the caller); kept with the episode until it is evicted (rewind_buffer.origins).

        Raises:
            InvalidArgument: the episode is malformed; nothing is stored then.
            ResourceExhausted: the first episode's storage cannot be had, or the buffer keeps as many writers
                as it may (rewind_buffer.origins); the buffer stays as it was.
            DeadlineExceeded: the rate limiter held it back for all of `wait` (reason RATE_LIMITED).
            FailedPrecondition: the write is stamped with an older generation than the buffer's.
        """
        return self._store([episode], ["episode"], wait, generation, [origin])

    def load(self, episodes: Sequence[Mapping[str, torch.Tensor]], wait: Wait = NO_WAIT,
             generation: int = 0, origins: Sequence[Origin] | None = None) -> int:
        """Validate every episode first, then store them all; returns num_eps.

        Args:
            origins: one per episode, as add()'s origin (None: every episode unattributed).

        Raises:
            InvalidArgument: any episode is malformed; nothing is stored then.
            ResourceExhausted: as add()'s.
            FailedPrecondition: more transitions at once than the rate limiter could ever let in.
            DeadlineExceeded: the rate limiter held them back for all of `wait` (reason RATE_LIMITED).
        """
        origins = list(origins) if origins is not None else [UNATTRIBUTED] * len(episodes)
        if len(origins) != len(episodes):
            raise InvalidArgument(f"origins: {len(origins)} for {len(episodes)} episodes; give one per episode")
        return self._store(episodes, [f"episodes[{i}]" for i in range(len(episodes))], wait, generation, origins)

    def fence(self, generation: int) -> None:
        """Refuse a write stamped with an older run generation; a newer one becomes the buffer's.

        Every resume starts a new generation, and its first stamped write (or its restore) raises the
        buffer's: a writer that outlived the run it belonged to can then no longer add to the resumed
        one. Unstamped writes (0) pass, as before generations existed.

        Raises:
            FailedPrecondition: naming both generations.
        """
        with self.lock:
            self.check_generation(generation)
            self.generation = max(self.generation, generation)

    def check_generation(self, generation: int) -> None:
        """fence() without taking the generation on: a write that may yet be refused changes nothing.

        Raises:
            FailedPrecondition: naming both generations.
        """
        if generation and generation < self.generation:
            raise FailedPrecondition(
                f"generation: this write is stamped with generation {generation}, but buffer {self.name!r} "
                f"belongs to generation {self.generation} (the run was resumed since); a writer of an older "
                "run must not add to it: restart it with the run's current generation", reason=STALE_GENERATION)

    def _store(self, episodes: Sequence[Mapping[str, torch.Tensor]], names: list[str], wait: Wait,
               generation: int, origins: list[Origin]) -> int:
        with self.lock:
            self.check_generation(generation)
            schema = self._validate(episodes, names)
            if not episodes:
                return self.num_eps
            self.origins.check_room(origins)
            count = sum(episode["obs"].shape[0] for episode in episodes)
            if self.limiter is not None:
                self._check_insert_fits(count)
                if self.gate.wait(INSERT, count, wait):
                    if self.schema is not schema:
                        schema = self._validate(episodes, names)  # the first episode of another call set the schema
                    self.origins.check_room(origins)  # other writers may have come meanwhile
            if self._rb is None:
                self._init_storage(schema)
            self.check_generation(generation)  # a newer writer may have come while this one waited
            self._write(episodes)
            self.generation = max(self.generation, generation)  # stored: the generation is the buffer's now
            self.origins.add(origins, generation)
            self.origins.keep(self.num_eps)  # the evicted episodes' origins go with them
            self.gate.counted(INSERT, count)
            return self.num_eps

    def _validate(self, episodes: Sequence[Mapping[str, torch.Tensor]], names: list[str]) -> EpisodeSchema | None:
        """Check every episode against the schema (or the first one's); returns the schema they share."""
        schema = self.schema
        for episode, where in zip(episodes, names, strict=True):
            validate_episodes(episode, schema=schema, horizon=self.settings.horizon, capacity=self.capacity,
                              where=where)
            if schema is None:
                schema = EpisodeSchema.from_tensors(episode)
            length = episode["obs"].shape[0]
            if self.settings.max_episode_length and length > self.settings.max_episode_length:
                raise InvalidArgument(f"{where}: {length:,} transitions, more than this buffer's "
                                      f"max_episode_length {self.settings.max_episode_length:,}")
        return schema

    def _check_insert_fits(self, count: int) -> None:
        """A load of more than one episode's worth at once could wait for a window it never gets."""
        limiter, longest = self.limiter, self.settings.longest_episode
        if count > longest and limiter.settings.inserts_wait and not limiter.settings.is_min_size:
            raise FailedPrecondition(
                f"episodes: {count:,} transitions at once, more than the longest episode ({longest:,}, "
                "max_episode_length) that the rate limiter's window makes room for; load fewer episodes per "
                "call, or pause the limiter while preloading (SetRateLimiter)")

    def close(self, error: RewindError) -> None:
        """Wake every call waiting for the limiter with `error`: the buffer was replaced, or the service stops."""
        self.gate.close(error)

    def change_limiter(self, settings: BufferSettings | None, paused: bool | None) -> None:
        """New limiter settings (counts start again from the transitions stored) and/or a pause or its end.

        Raises:
            InvalidArgument: settings that are malformed or could deadlock (nothing changes).
            FailedPrecondition: a pause asked of a buffer with no limiter.
        """
        with self.lock:
            if settings is not None and settings != self.settings:
                limiter = settings.rate_limiter()
                self.settings = settings
                keep_paused = bool(paused) if paused is not None else bool(self.limiter and self.limiter.paused)
                self.gate.replace(RateLimiter.rebased(limiter, self.transitions, keep_paused) if limiter else None)
            elif paused is not None:
                if self.limiter is None:
                    raise FailedPrecondition(f"paused: buffer {self.name!r} has no rate limiter; give "
                                             "samples_per_insert or min_size_to_sample first")
                limiter = self.limiter
                if limiter.paused and not paused:  # what came in while paused must not hold inserts back
                    limiter = RateLimiter.rebased(limiter.settings, self.transitions)
                limiter.paused = paused
                self.gate.replace(limiter)

    def _init_storage(self, schema: EpisodeSchema) -> None:
        """Allocate the storage for `schema`, or raise and leave the buffer empty and usable.

        Raises:
            FailedPrecondition: storage_device "cuda" cannot be honoured.
            ResourceExhausted: the storage budget or the allocation refuses it.
        """
        required = storage_bytes_for(schema, self.capacity)
        device = choose_storage_device(required, self.storage_device_preference)
        if self._reserve_storage is not None:
            self._reserve_storage(self, required)
        try:
            generator = torch.Generator(device=device).manual_seed(self.seed)
            rb = torchrl_adapter.replay_buffer(
                self.capacity, device, num_slices=self.settings.batch_size, slice_len=self.settings.horizon + 1,
                traj_key=TRAJ_KEY, writer=self._writer, generator=generator)
            # Now, not lazily inside the first write: a failure here leaves nothing half-built.
            torchrl_adapter.allocate(rb.storage, _example_row(schema))
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            self.reserved_bytes = 0
            raise ResourceExhausted(
                f"buffer_size: {self.capacity:,} transitions of this episode schema need "
                f"{required / 2**30:.2f} GiB of storage on {device}, which cannot be allocated "
                f"({type(exc).__name__}); lower buffer_size (ResetBuffer)") from None
        except BaseException:
            self.reserved_bytes = 0
            raise
        log.info("buffer %r: capacity %s transitions, storage %.3f GB on %s",
                 self.name, f"{self.capacity:,}", required / 1e9, device)
        self.schema, self.device, self._generator, self._rb = schema, device, generator, rb
        self._watch_blocks(BlockMap(row_bytes(schema)))

    def _watch_blocks(self, block_map: BlockMap) -> None:
        """Make `block_map` the one the writer tells of every write."""
        self.block_map = self._writer.block_map = block_map

    def _write(self, episodes: Sequence[Mapping[str, torch.Tensor]]) -> None:
        # One extend for the lot: the writer places them and batches the copies.
        lengths = [episode["obs"].shape[0] for episode in episodes]
        if len(episodes) == 1:  # the storage write is the one copy: no concatenation first
            data = {k: episodes[0][k] for k in FIELDS}
            data[TRAJ_KEY] = torch.full((lengths[0],), self.episodes_added, dtype=torch.int64)
        elif self._rb.storage.initialized:  # each episode straight into its rows: no concatenation either
            ids = range(self.episodes_added, self.episodes_added + len(episodes))
            only = [{k: episode[k] for k in FIELDS} for episode in episodes]
            torchrl_adapter.extend_in_place(self._rb, lambda: self._writer.extend_episodes(only, ids))
            self.episodes_added += len(episodes)
            return
        else:
            data = {k: torch.cat([episode[k] for episode in episodes]) for k in FIELDS}
            ids = torch.arange(self.episodes_added, self.episodes_added + len(episodes))
            data[TRAJ_KEY] = torch.repeat_interleave(ids, torch.tensor(lengths))
        self._rb.extend(TensorDict(data, batch_size=[sum(lengths)]))
        self.episodes_added += len(episodes)

    # -- sampling ------------------------------------------------------------

    def sample(self, wait: Wait = NO_WAIT, sequences: int | None = None) -> Batch:
        """Sample batch_size (or `sequences`) sequences of horizon+1 steps.

        Args:
            wait: how long the rate limiter may hold the sample back (default: not at all).
            sequences: how many (a shard's share of a sharded batch; 0: an empty batch that moves nothing).

        Raises:
            FailedPrecondition: fewer than min_history transitions are stored.
            DeadlineExceeded: the rate limiter held it back for all of `wait` (reason RATE_LIMITED).
        """
        count = self.settings.batch_size if sequences is None else sequences
        with self.lock:
            if count == 0:
                return self._empty_batch()
            self.gate.wait(SAMPLE, count, wait)  # an empty buffer waits for min_size_to_sample, as Reverb's does
            self.require_ready()
            # The sampler picks the slices (torchrl's SliceSampler, strict
            # length); gathering them time-major straight from the storage
            # columns skips ReplayBuffer.sample's generic TensorDict path and
            # the transpose-then-copy that TD-MPC2 does after it.
            index = torchrl_adapter.sample_index(self._rb, count)
            number = self.batches_sampled
            self.batches_sampled += 1
            self.gate.counted(SAMPLE, count)
            steps = index.view(count, self.settings.horizon + 1).t()
            columns = torchrl_adapter.columns(self._rb.storage)
            after_first = steps[1:]
            return Batch(
                obs=columns.get("obs")[steps],
                action=columns.get("action")[after_first],
                reward=columns.get("reward")[after_first].unsqueeze(-1),
                done=columns.get("done")[after_first].unsqueeze(-1),
                sequence_number=number, sampleable_starts=self.sampleable[0], sampleable_episodes=self.num_eps,
            )

    def _empty_batch(self) -> Batch:
        """A batch of no sequences, shaped as the schema's (or 0-wide before the first episode)."""
        steps = torch.zeros((self.settings.horizon + 1, 0), dtype=torch.long)
        if self._rb is None:
            empty = torch.zeros((self.settings.horizon, 0, 1))
            return Batch(obs=torch.zeros((self.settings.horizon + 1, 0, 0)), action=empty, reward=empty, done=empty,
                         sequence_number=self.batches_sampled)
        columns = torchrl_adapter.columns(self._rb.storage)
        return Batch(obs=columns.get("obs")[steps], action=columns.get("action")[steps[1:]],
                     reward=columns.get("reward")[steps[1:]].unsqueeze(-1),
                     done=columns.get("done")[steps[1:]].unsqueeze(-1), sequence_number=self.batches_sampled,
                     sampleable_starts=self.sampleable[0], sampleable_episodes=self.num_eps)

    # -- snapshot support ----------------------------------------------------

    def export_state(self, expect_episodes_added: int = 0, *, copy: bool = False,
                     block_bytes: int = DEFAULT_BLOCK_BYTES) -> BufferState:
        """A consistent state of everything a snapshot needs, as of now.

        By default no row is copied here (the trainer's stall is this lock
        hold): the state records the capture point (counters, writer state,
        generator state, the rows in use) and a RowCapture that registers with
        the writer, which copies rows aside only before a write would change
        one the snapshot still needs. Its columns are read under the lock, a
        chunk at a time, as snapshot.encode streams them; the bytes are those
        of a full copy taken now. copy=True takes that full copy instead.

        The capture also seals the buffer's blocks (rewind_buffer.blocks): the
        rows written since the last capture become new blocks, named later
        from the capture's rows, so that SnapshotBlocks sends only those.

        Args:
            expect_episodes_added: when > 0, the state is refused unless exactly
                this many episodes have been added (checked under the lock).
            copy: copy every used row now, under the lock (the old path; tests compare against it).
            block_bytes: the most bytes of one new block, when the capture seals its blocks.

        Raises:
            FailedPrecondition: the buffer has seen a different number of episodes.
        """
        with self.lock:
            if expect_episodes_added > 0 and expect_episodes_added != self.episodes_added:
                raise FailedPrecondition(
                    f"expect_episodes_added: buffer {self.name!r} has seen {self.episodes_added} episodes, "
                    f"not {expect_episodes_added}; the snapshot would not match the caller's step"
                )
            tensors: dict = {}
            rows = blocks = None
            if self._rb is not None:
                keys = (*FIELDS, TRAJ_KEY)
                if copy:
                    # A copy: the snapshot streams after the lock is released.
                    tensors = torchrl_adapter.copy_rows(self._rb.storage, keys)
                else:
                    live, used = torchrl_adapter.live_columns(self._rb.storage, keys)
                    rows = RowCapture(self.lock, live, used, self._writer.watchers)
                    tensors = dict(rows.columns())
                    blocks = self.block_map.seal(used, block_bytes)
                tensors["generator_state"] = self._generator.get_state().to("cpu", copy=True)
            return BufferState(
                name=self.name, settings=self.settings, seed=self.seed,
                storage_device=self.storage_device_preference,
                device_type=self.device.type if self.device is not None else None, schema=self.schema,
                episodes_added=self.episodes_added, batches_sampled=self.batches_sampled,
                transitions=self.transitions, writer=self._writer.state_dict(), tensors=tensors, rows=rows,
                limiter=self.limiter.state if self.limiter is not None else None, generation=self.generation,
                origins=self.origins.to_json(self.episodes_added), blocks=blocks, block_map=self.block_map)

    @classmethod
    def from_state(cls, name: str, state: BufferState, *, storage_device: str | None = None,
                   reserve_storage: StorageGuard | None = None) -> EpisodeBuffer:
        """Rebuild a buffer from export_state()'s output (checked by rewind_buffer.snapshot_check).

        Raises:
            ResourceExhausted: the storage cannot be had (budget or allocation).
            DataLoss: the generator state does not fit the generator.
        """
        buffer = cls.restore_begin(name, state, storage_device=storage_device, reserve_storage=reserve_storage)
        if state.schema is not None:
            torchrl_adapter.write_rows(buffer._rb.storage, {k: state.tensors[k] for k in (*FIELDS, TRAJ_KEY)})
            buffer.restore_finish(state)
        return buffer

    @classmethod
    def restore_begin(cls, name: str, state: BufferState, *, storage_device: str | None = None,
                      reserve_storage: StorageGuard | None = None) -> EpisodeBuffer:
        """A buffer with the state's settings and counters and its storage allocated, its rows still to write.

        Raises:
            ResourceExhausted: the storage cannot be had (budget or allocation).
        """
        buffer = cls(name, state.settings, storage_device=storage_device or state.storage_device, seed=state.seed,
                     reserve_storage=reserve_storage)
        buffer.episodes_added = state.episodes_added
        buffer.batches_sampled = state.batches_sampled
        buffer.generation = state.generation
        buffer.origins = Origins.from_json(state.origins, len(state.writer["episodes"]), state.episodes_added)
        if state.limiter is not None:  # the counts go on where the snapshot left them
            buffer.gate.replace(RateLimiter(state.limiter.settings, state.limiter.inserts, state.limiter.samples,
                                            state.limiter.paused))
        if state.schema is not None:
            buffer._init_storage(state.schema)
        return buffer

    def storage_columns(self) -> dict[str, torch.Tensor]:
        """The storage's column tensors (capacity rows each): where a block restore writes."""
        return torchrl_adapter.live_columns(self._rb.storage, (*FIELDS, TRAJ_KEY))[0]

    def restore_finish(self, state: BufferState, rows: int | None = None, block_map: BlockMap | None = None) -> None:
        """After the rows are written: the used length, the writer's layout and the sampler's generator.

        Args:
            state: the restored state (its tensors hold the generator state).
            rows: the used rows, when the rows were written straight into the columns (a block restore).
            block_map: which blocks hold the rows (a block restore), so the next checkpoint sends only new ones.

        Raises:
            DataLoss: the generator state does not fit the generator.
        """
        if rows is not None:
            torchrl_adapter.set_length(self._rb.storage, rows)
        if block_map is not None:
            self._watch_blocks(block_map)
        self._writer.load_state_dict(state.writer)
        if self.device.type == state.device_type:
            try:
                self._generator.set_state(state.tensors["generator_state"])
            except RuntimeError as exc:
                raise DataLoss(f"snapshot.tensors.generator_state: not a {state.device_type} generator's state "
                               f"({exc})") from None
        else:
            # A CPU generator state cannot drive a CUDA generator (or back):
            # reseed from the sample count so the stream is still deterministic.
            log.warning("buffer %r restored on %s (was %s): sampling sequence reseeded",
                        self.name, self.device.type, state.device_type)
            self._generator.manual_seed(self.seed + self.batches_sampled)

    def stats(self) -> BufferStats:
        """Capacity, counters, readiness, device and bytes."""
        with self.lock:
            return BufferStats(
                name=self.name, settings=self.settings, transitions=self.transitions, episodes=self.num_eps,
                ready=self.ready(), device=str(self.device) if self.device is not None else "",
                bytes=self.storage_bytes, episodes_added=self.episodes_added,
                episodes_evicted=self.episodes_evicted, batches_sampled=self.batches_sampled, schema=self.schema,
                limiter=(self.limiter.stats(self.transitions, self.settings.batch_size)
                         if self.limiter is not None else None),
                sampleable_starts=self.sampleable[0], sampleable_episodes=self.num_eps, generation=self.generation,
                writers=self.origins.stats())


def _example_row(schema: EpisodeSchema) -> TensorDict:
    """One zero transition of `schema`, plus its episode id: what the storage's columns are shaped after."""
    row = {name: torch.zeros(spec.shape, dtype=spec.dtype) for name, spec in schema.fields.items()}
    row[TRAJ_KEY] = torch.zeros((), dtype=torch.int64)
    return TensorDict(row, batch_size=[])
