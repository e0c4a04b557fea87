"""A snapshot with a valid sha256 but an inconsistent header is refused in full, and changes nothing.

Anyone can compute a valid sha256, so each case below takes a real snapshot,
changes its header (or tensors), hashes it again, and restores it: the status
is DATA_LOSS (RESOURCE_EXHAUSTED for a buffer over the service's budget),
never INTERNAL, and the buffer of that name keeps exactly its contents.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import random
import struct

import grpc
import pytest
import torch

from rewind import BufferClient
from rewind.codec import dtype_name
from rewind.errors import RewindError
from rewind_buffer import snapshot, snapshot_check
from rewind_buffer.episode_buffer import EpisodeBuffer
from rewind_buffer.settings import BufferSettings
from tests.support.episodes import episode

DATA_LOSS = grpc.StatusCode.DATA_LOSS
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def snapshot_bytes(client: BufferClient) -> bytes:
    out = io.BytesIO()
    client.snapshot(out)
    return out.getvalue()


def specs(tensors: dict[str, torch.Tensor]) -> list[dict]:
    return [{"key": k, "dtype": dtype_name(t.dtype), "shape": list(t.shape), "nbytes": t.numel() * t.element_size()}
            for k, t in tensors.items()]


def reencode(header: object, tensors: dict[str, torch.Tensor]) -> bytes:
    """A snapshot of exactly this header and these tensors, with a valid sha256."""
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() for t in tensors.values())
    blob = snapshot.MAGIC + struct.pack("<Q", len(head)) + head + body
    return blob + hashlib.sha256(blob).digest()


def _retensor(h, t, **changes):
    t = {**t, **changes}
    t = {k: v for k, v in t.items() if v is not None}
    h["tensors"] = specs(t)
    return h, t


def _set(path: str, value):
    """A case that sets header[path...] = value (path "a.b.0")."""
    def mutate(h, t):
        *parents, last = path.split(".")
        node = h
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
        return h, t
    return mutate


def _drop(path: str):
    def mutate(h, t):
        *parents, last = path.split(".")
        node = h
        for key in parents:
            node = node[key]
        del node[last]
        return h, t
    return mutate


def _episode_column(h, t):
    column = t["episode"].clone()
    column[5] = 1
    return _retensor(h, t, episode=column)


CASES = [
    # (id, mutation, status, the message's start)
    ("missing key", _drop("transitions"), DATA_LOSS, "snapshot: missing key(s) ['transitions']"),
    ("unexpected key", _set("surprise", 1), DATA_LOSS, "snapshot: missing key(s) [], unexpected key(s) ['surprise']"),
    ("string for a counter", _set("episodes_added", "2"), DATA_LOSS, "snapshot.episodes_added: '2' is not an integer"),
    ("bool for an integer", _set("seed", True), DATA_LOSS, "snapshot.seed: True is not an integer"),
    ("non-object JSON", lambda h, t: ([1, 2, 3], t), DATA_LOSS, "snapshot: the header is a JSON list, not an object"),
    ("newer format version", _set("format_version", 3), grpc.StatusCode.FAILED_PRECONDITION,
     "snapshot: format_version 3 was written by a newer Rewind; this buffer service reads format_version 2"),
    ("a whole snapshot called an index", _set("format_version", 2), DATA_LOSS,
     "snapshot: missing key(s) ['blocks', 'extents', 'rows']"),
    ("unknown format version", _set("format_version", 0), DATA_LOSS, "snapshot: format_version 0 is not supported"),
    ("schema shape contradicts the tensors", _set("schema.obs.shape", [4]), DATA_LOSS,
     "snapshot.tensors.obs: float32 [120, 3], but the schema says float32 [120, *[4]]"),
    ("schema dtype contradicts the tensors", _set("schema.action.dtype", "float64"), DATA_LOSS,
     "snapshot.tensors.action: float32 [120, 2], but the schema says float64"),
    ("unknown dtype in the schema", _set("schema.obs.dtype", "nn"), DATA_LOSS,
     "snapshot.schema.obs.dtype: 'nn' is not a supported dtype"),
    ("scalar field with a shape", _set("schema.reward.shape", [1]), DATA_LOSS,
     "snapshot.schema.reward.shape: [1], but reward is one scalar per step"),
    ("unknown dtype in the tensor list", _set("tensors.0.dtype", "Tensor"), DATA_LOSS,
     "snapshot.tensors[0].dtype: 'Tensor' is not a supported dtype"),
    ("object for a dtype", _set("tensors.2.dtype", {"a": 1}), DATA_LOSS,
     "snapshot.tensors[2].dtype: {'a': 1} is not a supported dtype"),
    ("list for a schema dtype", _set("schema.obs.dtype", ["x"]), DATA_LOSS,
     "snapshot.schema.obs.dtype: ['x'] is not a supported dtype"),
    ("negative dimension", _set("tensors.0.shape", [-1, 3]), DATA_LOSS, "snapshot.tensors[0].shape: [-1, 3]"),
    ("nbytes that contradict the shape", _set("tensors.0.nbytes", 4), DATA_LOSS, "snapshot.tensors[0].nbytes: 4"),
    ("extra tensor", lambda h, t: _retensor(h, t, extra=torch.zeros(4)), DATA_LOSS, "snapshot.tensors: keys ["),
    ("missing tensor", lambda h, t: _retensor(h, t, action=None), DATA_LOSS, "snapshot.tensors: keys ["),
    ("generator state of the wrong size",
     lambda h, t: _retensor(h, t, generator_state=torch.zeros(8, dtype=torch.uint8)), DATA_LOSS,
     "snapshot.tensors.generator_state: uint8 [8] is not a cpu generator's state"),
    ("transitions that disagree", _set("transitions", 999), DATA_LOSS,
     "snapshot.transitions: 999, but the writer's episodes hold 120"),
    ("episode beyond the tensors", lambda h, t: _set("transitions", 220)(*_set("writer.episodes.1.2", 160)(h, t)),
     DATA_LOSS, "snapshot.writer.episodes[1]: slots 60..220 are outside the 120 rows"),
    ("negative counter", _set("batches_sampled", -1), DATA_LOSS, "snapshot.batches_sampled: -1 is not an integer"),
    ("negative cursor", _set("writer.cursor", -5), DATA_LOSS, "snapshot.writer.cursor: -5 is not an integer"),
    ("cursor not after the newest episode", _set("writer.cursor", 100), DATA_LOSS, "snapshot.writer.cursor: 100"),
    ("ids that skip", _set("writer.episodes.0.0", 7), DATA_LOSS, "snapshot.writer.episodes[0]: id 7, expected 0"),
    ("more episodes added than ids", _set("episodes_added", 5), DATA_LOSS,
     "snapshot.writer.episodes[0]: id 0, expected 3"),
    ("overlapping episodes", _set("writer.episodes.1.1", 30), DATA_LOSS,
     "snapshot.writer.episodes[1]: starts at slot 30, expected 60"),
    ("no schema but tensors", _set("schema", None), DATA_LOSS, "snapshot.device_type: 'cpu' does not fit a buffer "
                                                               "without a schema"),
    ("unknown device type", _set("device_type", "tpu"), DATA_LOSS, "snapshot.device_type: 'tpu'"),
    ("unknown storage device", _set("storage_device", "disk"), DATA_LOSS, "snapshot.storage_device: 'disk'"),
    ("writer not an object", _set("writer", []), DATA_LOSS, "snapshot.writer: an object is expected"),
    ("settings key missing", _drop("settings.horizon"), DATA_LOSS, "snapshot.settings: missing key(s) ['horizon']"),
    ("invalid settings", _set("settings.min_history", 5000), DATA_LOSS,
     "snapshot.settings.min_history: 5000 exceeds buffer_size 2000"),
    ("more rows than buffer_size", _set("settings.buffer_size", 100), DATA_LOSS,
     "snapshot.tensors: 120 rows, outside 1..buffer_size 100"),
    ("episode column contradicts the layout", _episode_column, DATA_LOSS,
     "snapshot.tensors.episode[5]: 1, but the writer's layout says 0"),
    ("buffer_size over the budget", _set("settings.buffer_size", 10**12), EXHAUSTED,
     "buffer_size: 1,000,000,000,000 transitions exceed the 49,99"),  # 8,000 left over "buffer", 6,000 new
]


@pytest.mark.parametrize("mutate,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_an_inconsistent_snapshot_is_refused_and_changes_nothing(seeded, mutate, status, message):
    before = snapshot_bytes(seeded)
    header, tensors = snapshot.decode(before)
    header, tensors = mutate(copy.deepcopy(header), {k: v.clone() for k, v in tensors.items()})
    blob = reencode(header, tensors)
    for name in ("buffer", "fresh"):
        with pytest.raises(RewindError) as info:
            seeded.using(name).restore(blob)
        assert info.value.code == status and str(info.value).startswith(message), str(info.value)
    assert snapshot_bytes(seeded) == before
    assert [b.name for b in seeded.list_buffers()] == ["buffer", "test_buffer"]
    assert seeded.add(episode(2, 60)) == 3
    seeded.sample()


def test_a_header_nested_deeper_than_the_parser_goes_is_data_loss(seeded):
    before = snapshot_bytes(seeded)
    head = b'{"format_version":1,"tensors":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    blob = snapshot.MAGIC + struct.pack("<Q", len(head)) + head
    with pytest.raises(RewindError, match=r"^snapshot: header is not valid JSON \(RecursionError") as info:
        seeded.restore(blob + hashlib.sha256(blob).digest())
    assert info.value.code == DATA_LOSS and snapshot_bytes(seeded) == before


def test_the_unchanged_snapshot_reencoded_restores(seeded):
    before = snapshot_bytes(seeded)
    header, tensors = snapshot.decode(before)
    assert reencode(header, tensors) == before
    assert seeded.using("fresh").restore(reencode(header, tensors)).episodes == 2


def test_every_state_a_buffer_goes_through_passes_the_checks():
    # Random lengths, batches and wrap-arounds: the layout rules hold for every real state.
    rng = random.Random(0)
    buf = EpisodeBuffer("b", BufferSettings(buffer_size=600, batch_size=8, min_history=0, horizon=4))
    for i in range(150):
        if rng.random() < 0.2:
            buf.load([episode(i, rng.randint(5, 140)) for _ in range(rng.randint(1, 4))])
        else:
            buf.add(episode(i, rng.randint(5, 140)))
        state = buf.export_state()
        _, pieces = snapshot.encode(state.header(), state.tensors)
        header, tensors = snapshot.decode(b"".join(bytes(p) for p in pieces))
        checked = snapshot_check.parse_header(header)
        snapshot_check.check_tensors(dataclasses.replace(checked, tensors=tensors))
    assert buf.episodes_evicted > 100
