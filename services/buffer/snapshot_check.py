"""Checking a snapshot in full before anything of it is restored.

Anyone can compute a valid sha256, so the hash proves only that the bytes
arrived as they were sent. Everything a restored buffer relies on is checked
here instead: the header's keys and types, the settings, the schema against
the tensors' dtypes and shapes, the counters and the writer's episode layout
against the tensors' lengths, and (once the bytes are in) the episode column
against the layout. Anything inconsistent is DATA_LOSS, naming the field; a
snapshot is either restored exactly or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rewind.codec import dtype_name
from rewind.errors import DataLoss, InvalidArgument
from rewind_buffer import origins, snapshot
from rewind_buffer.blocks import DIGEST
from rewind_buffer.buffer_state import LATER_SETTINGS as LATER_DEFAULTS
from rewind_buffer.buffer_state import BufferState
from rewind_buffer.rate_limiter import LimiterState
from rewind_buffer.schema import FIELDS, SCALAR_FIELDS, EpisodeSchema, FieldSpec
from rewind_buffer.settings import STORAGE_DEVICES, BufferSettings
from rewind_buffer.writer import TRAJ_KEY

GENERATOR_KEY = "generator_state"
HEADER_KEYS = frozenset({"name", "settings", "seed", "storage_device", "device_type", "schema", "episodes_added",
                         "batches_sampled", "transitions", "writer", "format_version", "tensors"})
INDEX_KEYS = HEADER_KEYS | {"rows", "blocks", "extents"}
# Keys a header may lack: snapshots written before Rewind had a rate limiter, generations or origins.
OPTIONAL_KEYS = frozenset({"limiter", "generation", "origins"})
# The buffer settings every snapshot has (integers), and those added later, with their types.
SETTINGS_INTS = frozenset({"buffer_size", "batch_size", "min_history", "horizon"})
LATER_SETTINGS = {name: type(default) for name, default in LATER_DEFAULTS.items()}
WRITER_KEYS = frozenset({"cursor", "episodes", "evicted"})
DEVICE_TYPES = ("cpu", "cuda")
INT64_MAX = 2**63 - 1
CPU_GENERATOR_STATE_BYTES = torch.Generator().get_state().numel()


def parse_header(header: object) -> BufferState:
    """A snapshot header, checked in full, as a BufferState without tensors.

    Raises:
        DataLoss: a key is missing, unexpected or malformed, or the parts contradict each other.
    """
    state = _parse_state(header, HEADER_KEYS)
    rows = _check_tensor_list(state, snapshot.tensor_specs(header["tensors"]))
    _check_layout(state, rows)
    return state


@dataclass
class BlockIndex:
    """A block index's header, checked: the buffer's state, its used rows, and which blocks hold them."""

    state: BufferState
    rows: int
    blocks: list[list]   # [sha256, rows], in the order a restore sends them
    extents: list[list]  # [slot start, slot end, block number, block offset], covering [0, rows) in order


def parse_index(header: object) -> BlockIndex:
    """A block index's header (format_version 2), checked in full before any block is accepted.

    Raises:
        DataLoss: as parse_header, or the blocks and extents do not cover the rows exactly.
    """
    state = _parse_state(header, INDEX_KEYS)
    specs = snapshot.tensor_specs(header["tensors"])
    expected = [] if state.schema is None else [GENERATOR_KEY]
    if [spec.key for spec in specs] != expected:
        raise DataLoss(f"snapshot.tensors: keys {[spec.key for spec in specs]}, expected {expected} in a block index")
    if specs:
        _check_generator(state, specs[0])
    rows = _int(header["rows"], "snapshot.rows", maximum=state.settings.buffer_size)
    if (rows == 0) != (state.schema is None):
        raise DataLoss(f"snapshot.rows: {rows}, but the buffer {'has no' if state.schema is None else 'has a'} schema")
    blocks = _index_blocks(header["blocks"], state.settings.buffer_size)
    extents = _index_extents(header["extents"], blocks, rows)
    _check_layout(state, rows)
    return BlockIndex(state, rows, blocks, extents)


def _index_blocks(value: object, capacity: int) -> list[list]:
    if not isinstance(value, list):
        raise DataLoss("snapshot.blocks: a list is expected")
    seen = set()
    for i, entry in enumerate(value):
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or not DIGEST.fullmatch(entry[0]) or entry[0] in seen):
            raise DataLoss(f"snapshot.blocks[{i}]: [sha256 (64 hex digits, each block once), rows] is expected")
        _int(entry[1], f"snapshot.blocks[{i}]", minimum=1, maximum=capacity)
        seen.add(entry[0])
    return value


def _index_extents(value: object, blocks: list[list], rows: int) -> list[list]:
    if not isinstance(value, list):
        raise DataLoss("snapshot.extents: a list is expected")
    end, used = 0, set()
    for i, entry in enumerate(value):
        where = f"snapshot.extents[{i}]"
        if not isinstance(entry, list) or len(entry) != 4:
            raise DataLoss(f"{where}: [slot start, slot end, block, offset] is expected")
        start, stop, number, offset = (_int(x, where) for x in entry)
        if start != end or stop <= start or stop > rows:
            raise DataLoss(f"{where}: slots {start}..{stop}, expected a run from slot {end} within the {rows} rows")
        if number >= len(blocks) or offset + stop - start > blocks[number][1]:
            raise DataLoss(f"{where}: block {number} offset {offset} is outside the index's blocks")
        end = stop
        used.add(number)
    if end != rows or len(used) != len(blocks):
        raise DataLoss(f"snapshot.extents: cover slots 0..{end} of {rows} rows and {len(used)} of "
                       f"{len(blocks)} blocks; an index covers every row and references every block")
    return value


def _parse_state(header: object, keys: frozenset[str]) -> BufferState:
    """The part of a header a snapshot and a block index share, checked."""
    if not isinstance(header, dict):
        raise DataLoss(f"snapshot: the header is a JSON {type(header).__name__}, not an object")
    _check_keys(header, keys, "snapshot", optional=OPTIONAL_KEYS)
    settings, schema = _settings(header["settings"]), _schema(header["schema"])
    limiter = _limiter(header.get("limiter"), settings)
    device_type = header["device_type"]
    if device_type not in ((None,) if schema is None else DEVICE_TYPES):
        raise DataLoss(f"snapshot.device_type: {device_type!r:.50} does not fit a buffer "
                       f"{'without' if schema is None else 'with'} a schema")
    if header["storage_device"] not in STORAGE_DEVICES:
        raise DataLoss(f"snapshot.storage_device: {header['storage_device']!r:.50} is not one of {STORAGE_DEVICES}")
    if not isinstance(header["name"], str):
        raise DataLoss("snapshot.name: a string is expected")
    writer = header["writer"]
    if not isinstance(writer, dict):
        raise DataLoss("snapshot.writer: an object is expected")
    _check_keys(writer, WRITER_KEYS, "snapshot.writer")
    episodes = _episodes(writer["episodes"])
    episodes_added = _int(header["episodes_added"], "snapshot.episodes_added")
    generation = _int(header.get("generation", 0), "snapshot.generation")
    return BufferState(
        name=header["name"], settings=settings, seed=_int(header["seed"], "snapshot.seed", minimum=-INT64_MAX),
        storage_device=header["storage_device"], device_type=device_type, schema=schema,
        episodes_added=episodes_added,
        batches_sampled=_int(header["batches_sampled"], "snapshot.batches_sampled"),
        transitions=_int(header["transitions"], "snapshot.transitions"),
        writer={"cursor": _int(writer["cursor"], "snapshot.writer.cursor"), "episodes": episodes,
                "evicted": _int(writer["evicted"], "snapshot.writer.evicted")},
        tensors={}, limiter=limiter, generation=generation,
        origins=origins.parse(header.get("origins"), len(episodes), episodes_added, generation))


def check_tensors(state: BufferState) -> None:
    """The episode column against the writer's layout: live slots hold their episode's id, others -1 - slot.

    The sampler cuts sequences at changes of this column, so a column that
    disagrees with the layout would let sequences cross episodes.

    Raises:
        DataLoss: naming the first slot that disagrees.
    """
    if state.schema is None:
        return
    column = state.tensors[TRAJ_KEY]
    expected = -1 - torch.arange(column.shape[0], dtype=torch.int64)
    episodes = torch.tensor(state.writer["episodes"], dtype=torch.int64).reshape(-1, 3)
    ids, firsts, lengths = episodes.unbind(-1)
    starts = torch.repeat_interleave(firsts - (torch.cumsum(lengths, 0) - lengths), lengths)
    expected[starts + torch.arange(int(lengths.sum()))] = torch.repeat_interleave(ids, lengths)
    wrong = (column != expected).nonzero()
    if len(wrong):
        slot = int(wrong[0, 0])
        raise DataLoss(f"snapshot.tensors.{TRAJ_KEY}[{slot}]: {int(column[slot])}, but the writer's layout says "
                       f"{int(expected[slot])}")


def _check_keys(value: dict, expected: frozenset[str], where: str, optional: frozenset[str] = frozenset()) -> None:
    missing = sorted(expected - set(value))
    extra = sorted(str(k) for k in set(value) - expected - optional)
    if missing or extra:
        raise DataLoss(f"{where}: missing key(s) {missing}, unexpected key(s) {extra}"[:300])


def _int(value: object, where: str, *, minimum: int = 0, maximum: int = INT64_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise DataLoss(f"{where}: {value!r:.50} is not an integer in {minimum}..{maximum}")
    return value


def _settings(value: object) -> BufferSettings:
    if not isinstance(value, dict):
        raise DataLoss("snapshot.settings: an object is expected")
    _check_keys(value, SETTINGS_INTS, "snapshot.settings", optional=frozenset(LATER_SETTINGS))
    for name in SETTINGS_INTS:
        _int(value[name], f"snapshot.settings.{name}")
    for name, kind in LATER_SETTINGS.items():
        if name in value and not _is(value[name], kind):
            raise DataLoss(f"snapshot.settings.{name}: {value[name]!r:.50} is not {kind.__name__}")
    try:
        return BufferSettings(**value)
    except InvalidArgument as exc:
        raise DataLoss(f"snapshot.settings.{exc}") from None


def _is(value: object, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _limiter(value: object, settings: BufferSettings) -> LimiterState | None:
    """The rate limiter's counts, which must belong to the limiter the snapshot's settings describe."""
    if value is None:
        return None
    try:
        state = LimiterState.from_json(value)
    except (TypeError, KeyError, ValueError, AttributeError):
        raise DataLoss("snapshot.limiter: not a rate limiter's settings and counts") from None
    if state.inserts < 0 or state.samples < 0:
        raise DataLoss(f"snapshot.limiter: negative counts ({state.inserts} inserts, {state.samples} samples)")
    expected = settings.rate_limiter()
    if state.settings != expected:
        raise DataLoss(f"snapshot.limiter: settings {state.settings} do not match the snapshot's buffer settings "
                       f"({expected})")
    return state


def _schema(value: object) -> EpisodeSchema | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise DataLoss("snapshot.schema: an object or null is expected")
    _check_keys(value, frozenset(FIELDS), "snapshot.schema")
    specs = {}
    for name in FIELDS:
        where, entry = f"snapshot.schema.{name}", value[name]
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape"}:
            raise DataLoss(f"{where}: an object with dtype and shape is expected")
        dtype, shape = snapshot.dtype_of(entry["dtype"]), entry["shape"]
        if dtype is None:
            raise DataLoss(f"{where}.dtype: {entry['dtype']!r:.50} is not a supported dtype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise DataLoss(f"{where}.shape: {shape!r:.100} is not a list of non-negative integers")
        if name in SCALAR_FIELDS and shape:
            raise DataLoss(f"{where}.shape: {shape}, but {name} is one scalar per step")
        specs[name] = FieldSpec(dtype, tuple(shape))
    return EpisodeSchema(specs)


def _episodes(value: object) -> list[list[int]]:
    if not isinstance(value, list):
        raise DataLoss("snapshot.writer.episodes: a list is expected")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, list) or len(entry) != 3:
            raise DataLoss(f"snapshot.writer.episodes[{i}]: [id, first slot, length] is expected")
        out.append([_int(x, f"snapshot.writer.episodes[{i}]") for x in entry])
    return out


def _check_tensor_list(state: BufferState, specs: list[snapshot.TensorSpec]) -> int:
    """The tensor list against the schema; returns the rows every column has."""
    keys = [spec.key for spec in specs]
    expected = [] if state.schema is None else [*FIELDS, TRAJ_KEY, GENERATOR_KEY]
    if sorted(keys) != sorted(expected):
        raise DataLoss(f"snapshot.tensors: keys {keys}, expected {expected} for a buffer "
                       f"{'without' if state.schema is None else 'with'} a schema")
    if state.schema is None:
        return 0
    by_key = {spec.key: spec for spec in specs}
    columns = {**state.schema.fields, TRAJ_KEY: FieldSpec(torch.int64, ())}
    rows = by_key[TRAJ_KEY].shape[0] if by_key[TRAJ_KEY].shape else -1
    for key, field in columns.items():
        spec = by_key[key]
        if spec.dtype != field.dtype or spec.shape[1:] != field.shape or not spec.shape or spec.shape[0] != rows:
            raise DataLoss(f"snapshot.tensors.{key}: {dtype_name(spec.dtype)} {list(spec.shape)}, but the "
                           f"schema says {dtype_name(field.dtype)} [{rows}, *{list(field.shape)}]")
    if not 1 <= rows <= state.settings.buffer_size:
        raise DataLoss(f"snapshot.tensors: {rows} rows, outside 1..buffer_size {state.settings.buffer_size}")
    _check_generator(state, by_key[GENERATOR_KEY])
    return rows


def _check_generator(state: BufferState, generator: snapshot.TensorSpec) -> None:
    if generator.dtype != torch.uint8 or len(generator.shape) != 1 or (
            state.device_type == "cpu" and generator.shape[0] != CPU_GENERATOR_STATE_BYTES):
        raise DataLoss(f"snapshot.tensors.{GENERATOR_KEY}: {dtype_name(generator.dtype)} "
                       f"{list(generator.shape)} is not a {state.device_type} generator's state")


def _check_layout(state: BufferState, rows: int) -> None:
    """Counters and the writer's episodes against the rows: FIFO order, contiguous runs, one wrap at most."""
    episodes, cursor = state.writer["episodes"], state.writer["cursor"]
    if state.transitions != sum(length for _, _, length in episodes):
        raise DataLoss(f"snapshot.transitions: {state.transitions}, but the writer's episodes hold "
                       f"{sum(length for _, _, length in episodes)}")
    if state.writer["evicted"] > state.episodes_added or (state.schema is None) != (state.episodes_added == 0):
        raise DataLoss(f"snapshot.episodes_added: {state.episodes_added} does not fit writer.evicted "
                       f"{state.writer['evicted']} and a schema of {'none' if state.schema is None else 'its own'}")
    if (state.episodes_added > 0) != bool(episodes) or len(episodes) > state.episodes_added:
        raise DataLoss(f"snapshot.writer.episodes: {len(episodes)} episodes stored of {state.episodes_added} added "
                       "(the newest episode is always stored)")
    if not 0 <= cursor <= rows:
        raise DataLoss(f"snapshot.writer.cursor: {cursor} is outside 0..{rows} rows")
    first_id, wrapped, end = state.episodes_added - len(episodes), False, None
    for i, (eid, first, length) in enumerate(episodes):
        where = f"snapshot.writer.episodes[{i}]"
        if eid != first_id + i:
            raise DataLoss(f"{where}: id {eid}, expected {first_id + i} (stored ids run up to episodes_added - 1)")
        if length < 1 or first + length > rows:
            raise DataLoss(f"{where}: slots {first}..{first + length} are outside the {rows} rows")
        if end is not None and first != end:
            if first != 0 or wrapped:
                raise DataLoss(f"{where}: starts at slot {first}, expected {end} (episodes are stored back to back)")
            wrapped = True
        end = first + length
    if episodes and (end != cursor or (wrapped and end > episodes[0][1])):
        raise DataLoss(f"snapshot.writer.cursor: {cursor} does not end the newest episode (slot {end}), or the "
                       "episodes overlap")
