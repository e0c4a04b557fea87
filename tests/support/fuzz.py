"""A seeded mutation fuzzer for every RPC of the buffer, checkpoint and trainer services.

The RPCs are enumerated from the generated descriptors (`all_rpcs()`), so a new
RPC is fuzzed as soon as its world has a `template_<Method>`; `missing_templates()`
names the RPCs that have none. For each RPC:

  1. a world (the service, started in this process, seeded with state: a buffer
     holding episodes, committed checkpoints, a trainer) builds a valid request;
  2. `mutate()` derives a request from it, deterministically from (seed, RPC,
     index): a field set to an edge value (empty/long/odd strings, huge or
     negative ints, NaN/inf, unknown enum values, bytes truncated/flipped/random),
     a repeated field emptied/duplicated, a nested message dropped, the
     serialized bytes mutated (malformed protobuf reaches the server), the stream
     of a client-streaming call reordered, or a service-specific change (a
     re-signed buffer snapshot, a consistently renamed checkpoint file);
  3. `invoke()` sends the raw bytes (identity serializers) with a short deadline;
  4. the outcome is checked: no INTERNAL or UNKNOWN, no DEADLINE_EXCEEDED, no
     answer lost in transport (a status message over the metadata limit), and
     a refused request leaves the world's fingerprint (listings, stats, the
     store's files) exactly as it was. A request the service accepts may change
     state: the world's `follow_up()` then uses what it made (samples the
     buffer it created, looks up the checkpoint it saved), judged the same
     way, `repair()` puts back what later templates rely on, and the
     fingerprint becomes the new baseline.

    with memory_cap(), ServerLog() as log:
        world = BufferWorld()
        report = fuzz_rpc(world, rpc_by_key("BufferService/Restore"), count=100, server_log=log)
        print(report.explain())

Channels and call metadata are made in one place, `connect()` (make_channel
already adds a bearer token from REWIND_TOKEN_FILE; `token=` puts one in the
metadata explicitly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.trainer.v1 import trainer_pb2, trainer_pb2_grpc

BUFFER_SERVICE = buffer_pb2.DESCRIPTOR.services_by_name["BufferService"]
CHECKPOINT_SERVICE = checkpoint_pb2.DESCRIPTOR.services_by_name["CheckpointService"]
TRAINER_SERVICE = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]
SERVICES: tuple[ServiceDescriptor, ...] = (BUFFER_SERVICE, CHECKPOINT_SERVICE, TRAINER_SERVICE)

MAX_MESSAGE_BYTES = 64 * 2**20
DEFAULT_SEED = 20_251_130          # the tests' and the benchmark's
DEFAULT_DEADLINE_S = 5.0
MAX_RESPONSES = 64                 # a server stream is cancelled after this many messages
FAILING_CODES = ("INTERNAL", "UNKNOWN")
# What a status's message says when the transport, not the service, ended the call: the service's own
# answer was lost (e.g. an error message that echoes a huge input exceeds the metadata limit).
LOST_ANSWER = ("metadata size exceeds", "Stream removed", "Socket closed", "Connection reset",
               "Sent message larger than max")
FOLLOW_UP_DEADLINE_S = 3.0


# -- the RPCs, from the descriptors ------------------------------------------------------------------


@dataclass(frozen=True)
class Rpc:
    """One RPC of one service, as the descriptors define it."""

    service: ServiceDescriptor
    method: MethodDescriptor

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def key(self) -> str:
        """"BufferService/AddEpisode": how reports and --rpc name it."""
        return f"{self.service.name}/{self.method.name}"

    @property
    def path(self) -> str:
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def request_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return message_factory.GetMessageClass(self.method.output_type)

    @property
    def client_streaming(self) -> bool:
        return self.method.client_streaming

    @property
    def server_streaming(self) -> bool:
        return self.method.server_streaming

    def __str__(self) -> str:
        return self.key


def all_rpcs(services: Iterable[ServiceDescriptor] = SERVICES) -> list[Rpc]:
    """Every RPC of the given services, in descriptor order."""
    return [Rpc(service, method) for service in services for method in service.methods]


def rpc_by_key(key: str) -> Rpc:
    for rpc in all_rpcs():
        if rpc.key == key or rpc.name == key:
            return rpc
    raise KeyError(f"no RPC {key!r}; known: {', '.join(r.key for r in all_rpcs())}")


# -- channels and metadata: the one place they are made ------------------------------------------------


def connect(address: str, *, token: str | None = None) -> tuple[grpc.Channel, tuple[tuple[str, str], ...]]:
    """A channel to `address` and the metadata every call on it carries.

    Every channel of the fuzzer (fuzzed calls, seeding, fingerprints) comes from
    here; a bearer token, when the services require one, goes into the metadata.
    """
    from rewind.channel import make_channel

    channel = make_channel(address, max_message_bytes=MAX_MESSAGE_BYTES)
    metadata: tuple[tuple[str, str], ...] = ()
    if token:
        metadata += (("authorization", f"Bearer {token}"),)
    return channel, metadata


class Caller:
    """Typed calls (for seeding and fingerprints) over a channel from `connect()`."""

    def __init__(self, address: str, stub_class: type, timeout: float = 20.0) -> None:
        self.address = address
        self.channel, self.metadata = connect(address)
        self.stub = stub_class(self.channel)
        self.timeout = timeout

    def __call__(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)

    def stream(self, method: str, request: Any) -> list:
        return list(getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata))

    def close(self) -> None:
        self.channel.close()


# -- one raw call ------------------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class CallResult:
    code: str                      # a grpc.StatusCode name
    details: str
    responses: list[bytes]
    truncated: bool                # a server stream the fuzzer cancelled after MAX_RESPONSES
    seconds: float


def invoke(channel: grpc.Channel, metadata: tuple, rpc: Rpc, frames: list[bytes], timeout: float,
           max_responses: int = MAX_RESPONSES) -> CallResult:
    """Send `frames` (serialized requests, sent as they are) to `rpc`; the status it ends with."""
    kinds = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
             (True, False): channel.stream_unary, (True, True): channel.stream_stream}
    multicallable = kinds[rpc.client_streaming, rpc.server_streaming](
        rpc.path, request_serializer=_identity, response_deserializer=_identity)
    request = iter(list(frames)) if rpc.client_streaming else frames[0]
    started = time.monotonic()
    responses: list[bytes] = []
    try:
        if not rpc.server_streaming:
            responses.append(multicallable(request, timeout=timeout, metadata=metadata))
            return CallResult("OK", "", responses, False, time.monotonic() - started)
        call = multicallable(request, timeout=timeout, metadata=metadata)
        for response in call:
            responses.append(response)
            if len(responses) >= max_responses:
                call.cancel()
                return CallResult("OK", "", responses, True, time.monotonic() - started)
        return CallResult("OK", "", responses, False, time.monotonic() - started)
    except grpc.RpcError as exc:
        return CallResult(exc.code().name, exc.details() or "", responses, False, time.monotonic() - started)


# -- mutations ---------------------------------------------------------------------------------------

EDGE_STRINGS = (
    "", " ", "/", "//", ".", "..", "../..", "../../../etc/passwd", "a/../b", "a/b", "/etc/passwd", "\\", "a\\b",
    "\x00", "a\x00b", "\n", "\t", "é", "🙂", "名前", "\u202e", "%2e%2e", "~", "*", "-", "-rf", "CON",
    "manifest.json", "retention.json", "s3://other-bucket/x", "file:///etc", "file:///", "127.0.0.1:1",
    "unix:/tmp/rewind-fuzz-nothing", "x" * 101, "x" * 129, "x" * 1000, "x" * 100_000,
)
EDGE_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 0.0, 1e308, -1e308, 5e-324, 1e-45, 3.4e38)
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1), FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1), FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1), FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1), FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
EDGE_INTS = (0, 1, -1, 2, -2, 2**31 - 1, 2**31, -2**31, 2**32, 2**53 + 1, 10**10, 10**12, 2**62, -2**62,
             2**63 - 1, -2**63, 2**64 - 1)
UNKNOWN_ENUMS = (999, -1, 2**31 - 1, -2**31, 64)


def short(value: Any, limit: int = 40) -> str:
    """A value as a description shows it: repr, cut, with its length when long."""
    text = repr(value)
    if len(text) <= limit:
        return text
    unit = "bytes" if isinstance(value, bytes | bytearray) else "chars" if isinstance(value, str) else "items"
    size = f" ({len(value)} {unit})" if hasattr(value, "__len__") else ""
    return f"{text[:limit]}…{size}"


def edge_string(orig: str, rng: random.Random) -> str:
    derived = (orig + "/x", "../" + orig, orig + "/../" + orig, orig + "\x00", orig.upper(), " " + orig, orig + " ",
               orig * 50, orig[:-1], orig + "é", orig + ".", orig + "..", "." + orig, orig + "\\x")
    return rng.choice(EDGE_STRINGS + derived if orig else EDGE_STRINGS)


def edge_int(orig: int, field_type: int, rng: random.Random) -> int:
    low, high = INT_RANGES[field_type]
    value = rng.choice(EDGE_INTS + (orig + 1, orig - 1, -orig, orig * 1000, orig * 2**20))
    return min(max(value, low), high)


def edge_float(orig: float, rng: random.Random) -> float:
    return rng.choice(EDGE_FLOATS + (orig * 1e10, -orig))


def mutate_bytes_value(orig: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A bytes field's new value, and how it was made."""
    n = len(orig)
    ops: list[tuple[str, Callable[[], bytes]]] = [
        ("emptied", lambda: b""),
        ("random bytes, same length", lambda: rng.randbytes(n)),
        ("random bytes", lambda: rng.randbytes(rng.randint(1, 64))),
        ("doubled", lambda: orig + orig),
        ("0xff-filled", lambda: b"\xff" * n),
        ("zero bytes appended", lambda: orig + bytes(rng.randint(1, 16))),
    ]
    if n:
        cut = rng.randrange(n)
        bit = rng.randrange(8 * n)
        ops += [(f"truncated to {cut} bytes", lambda: orig[:cut]),
                (f"bit {bit} flipped", lambda: _flip(orig, bit)),
                (f"first {cut} bytes dropped", lambda: orig[cut:])]
        if n % 4 == 0:
            ops.append(("float32 NaN-filled", lambda: struct.pack("<f", math.nan) * (n // 4)))
            ops.append(("float32 inf-filled", lambda: struct.pack("<f", math.inf) * (n // 4)))
    how, make = rng.choice(ops)
    return make(), how


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@dataclass
class _Slot:
    """Something a field mutation can change: a field, an element, a map entry, a whole container."""

    owner: Message
    field: FieldDescriptor
    where: str
    kind: str                      # scalar, element, map_value, message, repeated, map
    index: int | None = None
    key: Any = None


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry


def slots(msg: Message, path: str = "", depth: int = 0) -> list[_Slot]:
    """Every mutable place in `msg`: its scalar fields (set or not), its containers and their elements."""
    out: list[_Slot] = []
    for fd in msg.DESCRIPTOR.fields:
        where = f"{path}.{fd.name}" if path else fd.name
        if _is_map(fd):
            out.append(_Slot(msg, fd, where, "map"))
            value_fd = fd.message_type.fields_by_name["value"]
            container = getattr(msg, fd.name)
            for key in sorted(container):
                if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
                    out += slots(container[key], f"{where}[{key!r}]", depth + 1) if depth < 12 else []
                else:
                    out.append(_Slot(msg, fd, f"{where}[{key!r}]", "map_value", key=key))
        elif fd.is_repeated:
            out.append(_Slot(msg, fd, where, "repeated"))
            for i, item in enumerate(getattr(msg, fd.name)):
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    out += slots(item, f"{where}[{i}]", depth + 1) if depth < 12 else []
                else:
                    out.append(_Slot(msg, fd, f"{where}[{i}]", "element", index=i))
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            out.append(_Slot(msg, fd, where, "message"))
            if msg.HasField(fd.name) and depth < 12:
                out += slots(getattr(msg, fd.name), where, depth + 1)
        else:
            out.append(_Slot(msg, fd, where, "scalar"))
    return out


def scalar_value(fd: FieldDescriptor, orig: Any, rng: random.Random) -> tuple[Any, str]:
    """A new value for a scalar of `fd`'s type, and its description."""
    if fd.type == FieldDescriptor.TYPE_STRING:
        value = edge_string(orig, rng)
        return value, short(value)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        value, how = mutate_bytes_value(orig, rng)
        return value, how
    if fd.type in INT_RANGES:
        value = edge_int(orig, fd.type, rng)
        return value, str(value)
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        value = edge_float(orig, rng)
        return value, repr(value)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return not orig, str(not orig)
    if fd.type == FieldDescriptor.TYPE_ENUM:
        value = rng.choice([v.number for v in fd.enum_type.values] + list(UNKNOWN_ENUMS))
        known = fd.enum_type.values_by_number.get(value)
        return value, known.name if known else f"{value} (unknown enum value)"
    raise TypeError(f"unhandled field type {fd.type} of {fd.full_name}")


def _default_of(fd: FieldDescriptor) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return ""
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return b""
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.0
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return False
    return 0


def _mutate_scalar(slot: _Slot, rng: random.Random) -> str:
    fd = slot.field
    if slot.kind == "element":
        container = getattr(slot.owner, fd.name)
        value, text = scalar_value(fd, container[slot.index], rng)
        container[slot.index] = value
    elif slot.kind == "map_value":
        container = getattr(slot.owner, fd.name)
        value, text = scalar_value(fd.message_type.fields_by_name["value"], container[slot.key], rng)
        container[slot.key] = value
    else:
        value, text = scalar_value(fd, getattr(slot.owner, fd.name), rng)
        setattr(slot.owner, fd.name, value)
    return f"{slot.where} = {text}"


def _deep_struct(target: Message, levels: int) -> None:
    """A google.protobuf.Struct nested `levels` deep (protobuf's parsers stop at 100)."""
    node = target
    for _ in range(levels):
        node = node.fields["d"].struct_value


def _mutate_message_field(slot: _Slot, rng: random.Random) -> str:
    fd, owner = slot.field, slot.owner
    ops = ["dropped", "emptied"]
    if fd.message_type.full_name == "google.protobuf.Struct":
        ops += ["nested 200 deep", "10,000 keys"]
    op = rng.choice(ops)
    if op == "dropped":
        owner.ClearField(fd.name)
    elif op == "emptied":
        owner.ClearField(fd.name)
        getattr(owner, fd.name).SetInParent()
    elif op == "nested 200 deep":
        _deep_struct(getattr(owner, fd.name), 200)
    else:
        getattr(owner, fd.name).update({f"k{i}": i for i in range(10_000)})
    return f"{slot.where}: {op}"


def _mutate_repeated(slot: _Slot, rng: random.Random) -> str:
    fd = slot.field
    container = getattr(slot.owner, fd.name)
    items = list(container)
    is_message = fd.type == FieldDescriptor.TYPE_MESSAGE
    ops = ["emptied", "appended"]
    if items:
        ops += ["duplicated", "one element duplicated", "one element dropped", "reversed", "one element x100"]
    if items and not is_message and fd.type in INT_RANGES:
        ops.append("every element negated")
    op = rng.choice(ops)
    copies: list = []
    if op == "appended":
        copies = [rng.choice(items)] if items and is_message else []
        if not is_message:
            copies = [scalar_value(fd, _default_of(fd), rng)[0]]
        elif not items:
            container.add()
    elif op == "duplicated":
        copies = items
    elif op == "one element duplicated":
        copies = [rng.choice(items)]
    elif op == "one element x100":
        copies = [rng.choice(items)] * 100
    elif op in ("emptied", "one element dropped", "reversed", "every element negated"):
        keep = {"emptied": [], "reversed": items[::-1]}.get(op, items)
        if op == "one element dropped":
            keep = items[:]
            keep.pop(rng.randrange(len(items)))
        if op == "every element negated":
            low, high = INT_RANGES[fd.type]
            keep = [min(max(-v, low), high) for v in items]
        keep = [_copy(v) for v in keep] if is_message else keep
        del container[:]
        copies = keep
    for item in copies:
        if is_message:
            container.add().CopyFrom(item)
        else:
            container.append(item)
    return f"{slot.where}: {op}"


def _copy(msg: Message) -> Message:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def _mutate_map(slot: _Slot, rng: random.Random) -> str:
    fd = slot.field
    container = getattr(slot.owner, fd.name)
    keys = sorted(container)
    value_fd = fd.message_type.fields_by_name["value"]
    is_message = value_fd.type == FieldDescriptor.TYPE_MESSAGE
    op = rng.choice(["emptied", "entry added", "key renamed", "entry dropped"] if keys else ["entry added"])
    if op == "emptied":
        for key in keys:
            del container[key]
        return f"{slot.where}: emptied"
    if op == "entry dropped":
        key = rng.choice(keys)
        del container[key]
        return f"{slot.where}: entry {short(key)} dropped"
    new_key = edge_string(rng.choice(keys) if keys else "", rng)
    if op == "key renamed":
        old = rng.choice(keys)
        value = _copy(container[old]) if is_message else container[old]
        del container[old]
    else:
        old, value = None, (container[rng.choice(keys)] if keys else None)
        value = _copy(value) if is_message and value is not None else value
        if not is_message:
            value = scalar_value(value_fd, _default_of(value_fd), rng)[0]
    if not is_message:
        container[new_key] = value
    elif value is not None:
        container[new_key].CopyFrom(value)
    else:
        container[new_key].SetInParent()
    return f"{slot.where}: {op} {short(old) + ' -> ' if old is not None else ''}{short(new_key)}"


def mutate_fields(msg: Message, rng: random.Random) -> str:
    """Change one place in `msg` (in place); returns what changed."""
    slot = rng.choice(slots(msg))
    if slot.kind in ("scalar", "element", "map_value"):
        return _mutate_scalar(slot, rng)
    if slot.kind == "message":
        return _mutate_message_field(slot, rng)
    if slot.kind == "repeated":
        return _mutate_repeated(slot, rng)
    return _mutate_map(slot, rng)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mutate_frame(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Byte-level damage to one serialized message (most of it is no longer valid protobuf)."""
    n = len(data)
    pos = rng.randrange(n + 1)
    span = rng.randint(1, max(1, min(16, n)))
    ops: list[tuple[str, Callable[[], bytes]]] = [
        (f"truncated to {pos} bytes", lambda: data[:pos]),
        (f"{span} random bytes inserted at {pos}", lambda: data[:pos] + rng.randbytes(span) + data[pos:]),
        ("garbage appended", lambda: data + rng.randbytes(rng.randint(1, 32))),
        ("unknown field 9999 appended", lambda: data + _varint(9999 << 3) + _varint(rng.getrandbits(40))),
        ("field 1 with a 4 GiB length appended", lambda: data + b"\x0a\xff\xff\xff\xff\x0f"),
        ("field 1 := invalid UTF-8", lambda: data + b"\x0a\x02\xc3\x28"),
        ("field 1 with the wrong wire type", lambda: data + b"\x0d" + rng.randbytes(4)),
        ("field 0 (invalid tag) appended", lambda: data + b"\x00\x01"),
        ("end-group tag appended", lambda: data + b"\x0c"),
        ("an overlong varint appended", lambda: data + b"\x08" + b"\xff" * 11 + b"\x01"),
        ("emptied", lambda: b""),
    ]
    if n:
        bits = sorted(rng.sample(range(8 * n), min(8 * n, rng.randint(1, 8))))
        start = rng.randrange(n)
        ops += [
            (f"bits {bits} flipped", lambda: _flip_all(data, bits)),
            (f"{span} bytes deleted at {start}", lambda: data[:start] + data[start + span:]),
            (f"{span} bytes at {start} duplicated", lambda: data[:start + span] + data[start:]),
            (f"byte {start} set to 0xff", lambda: data[:start] + b"\xff" + data[start + 1:]),
            (f"byte {start} set to 0x80", lambda: data[:start] + b"\x80" + data[start + 1:]),
            (f"{span} random bytes written at {start}", lambda: data[:start] + rng.randbytes(span)
             + data[start + span:]),
        ]
    how, make = rng.choice(ops)
    return make(), f"bytes: {how}"


def _flip_all(data: bytes, bits: list[int]) -> bytes:
    for bit in bits:
        data = _flip(data, bit)
    return data


def mutate_stream(frames: list[bytes], rng: random.Random) -> tuple[list[bytes], str]:
    """Change the sequence of a client stream's messages."""
    n = len(frames)
    i = rng.randrange(n) if n else 0
    j = rng.randrange(n) if n else 0
    ops: list[tuple[str, Callable[[], list[bytes]]]] = [
        ("no messages", lambda: []),
        ("an empty message inserted", lambda: frames[:i] + [b""] + frames[i:]),
    ]
    if n:
        ops += [
            (f"message {i} dropped", lambda: frames[:i] + frames[i + 1:]),
            (f"message {i} sent twice", lambda: frames[:i + 1] + frames[i:]),
            (f"messages {i} and {j} swapped", lambda: _swapped(frames, i, j)),
            ("messages reversed", lambda: frames[::-1]),
            ("only the first message", lambda: frames[:1]),
            ("only the last message", lambda: frames[-1:]),
            ("the first message x50", lambda: frames[:1] * 50 + frames[1:]),
            ("the whole stream twice", lambda: frames + frames),
        ]
    how, make = rng.choice(ops)
    return make(), f"stream: {how}"


def _swapped(frames: list[bytes], i: int, j: int) -> list[bytes]:
    out = list(frames)
    out[i], out[j] = out[j], out[i]
    return out


DomainMutation = Callable[[list[Message], random.Random], str]
# probe(label, method, requests): call a method of the world's service after an accepted request.
Probe = Callable[[str, str, list[Message]], "CallResult"]


def parse(rpc: Rpc, frames: list[bytes]) -> list[Message]:
    """The messages of a request the service accepted (frames that do not parse are left out)."""
    out = []
    for frame in frames:
        try:
            out.append(rpc.request_class.FromString(frame))
        except Exception:
            continue
    return out


@dataclass
class Mutation:
    frames: list[bytes]
    description: str


def mutate(rpc: Rpc, messages: list[Message], rng: random.Random,
           domain: list[DomainMutation] = ()) -> Mutation:
    """A mutated request: field, byte, stream or service-specific mutations, chosen by `rng`."""
    kinds, weights = ["field", "bytes"], [6 if any(slots(m) for m in messages) else 0, 3]
    if rpc.client_streaming:
        kinds.append("stream")
        weights.append(2)
    if domain:
        kinds.append("domain")
        weights.append(3)
    kind = rng.choices(kinds, weights)[0]
    messages = [_copy(m) for m in messages]
    if kind == "domain":
        description = rng.choice(domain)(messages, rng)
        return Mutation(_serialize(messages), description)
    if kind == "field":
        changes = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            i = rng.choice([i for i, m in enumerate(messages) if slots(m)])
            change = mutate_fields(messages[i], rng)
            changes.append(f"[{i}] {change}" if rpc.client_streaming else change)
        return Mutation(_serialize(messages), "; ".join(changes))
    frames = _serialize(messages)
    if kind == "stream":
        frames, description = mutate_stream(frames, rng)
        return Mutation(frames, description)
    i = rng.randrange(len(frames))
    frames[i], description = mutate_frame(frames[i], rng)
    return Mutation(frames, f"[{i}] {description}" if rpc.client_streaming else description)


def _serialize(messages: list[Message]) -> list[bytes]:
    return [m.SerializeToString() for m in messages]


def request_rng(seed: int, rpc: Rpc, index: int, what: str = "mutation") -> random.Random:
    """The generator of request `index` of `rpc`: the same (seed, rpc, index) always gives the same request."""
    return random.Random(f"{seed}/{rpc.key}/{index}/{what}")


# -- service-specific mutations ----------------------------------------------------------------------

_SNAPSHOT_PREFIX = struct.Struct("<8sQ")   # services/buffer/snapshot.py: magic, header length
_SNAPSHOT_DIGEST = 32
_DEEP = "__rewind_fuzz_deep__"
EDGE_JSON = (None, True, False, -1, 0, 1, 2**31, 2**63, -2**63 - 1, 2**64, 10**30, 1.5, -0.5, math.nan, math.inf,
             "", "x", "cuda", "cuda:7", "../..", [], {}, [1, 2], {"a": 1}, _DEEP)


def _json_slots(node: Any, path: str = "") -> list[tuple[Any, Any, str]]:
    """(container, key, path) of every value in a JSON document."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        where = f"{path}.{key}" if isinstance(node, dict) else f"{path}[{key}]"
        out.append((node, key, where))
        out += _json_slots(value, where)
    return out


def resign_snapshot(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    """A buffer snapshot changed inside and given a valid sha256 again, so it gets past the checksum."""
    magic, head_len = _SNAPSHOT_PREFIX.unpack_from(blob)
    start = _SNAPSHOT_PREFIX.size
    header = json.loads(blob[start:start + head_len])
    data = blob[start + head_len:-_SNAPSHOT_DIGEST]
    op = rng.choice(["header value", "header value", "header value", "header key dropped", "unknown header key",
                     "tensor bytes", "tensor bytes truncated", "header length off", "magic"])
    description = f"snapshot (re-signed): {op}"
    if op in ("header value", "header key dropped"):
        container, key, where = rng.choice(_json_slots(header))
        if op == "header key dropped" and isinstance(container, dict):
            del container[key]
            description += f" {where}"
        else:
            container[key] = rng.choice(EDGE_JSON)
            description += f" {where} = {short(container[key])}"
    elif op == "unknown header key":
        header["fuzz"] = rng.choice(EDGE_JSON)
    head = json.dumps(header, separators=(",", ":")).encode()
    head = head.replace(f'"{_DEEP}"'.encode(), b"[" * 100_000 + b"]" * 100_000)
    if op == "tensor bytes" and data:
        at = rng.randrange(len(data))
        data = data[:at] + rng.randbytes(min(8, len(data) - at)) + data[at + 8:]
        description += f" at {at}"
    elif op == "tensor bytes truncated":
        data = data[:rng.randrange(len(data) + 1)]
    length = len(head) + (rng.choice((-1, 1, 2**40, -len(head))) if op == "header length off" else 0)
    if op == "magic":
        magic = rng.choice((b"RWNDBUF2", b"RWNDBUF0", b"\x00" * 8))
    body = _SNAPSHOT_PREFIX.pack(magic, max(0, length)) + head + data
    return body + hashlib.sha256(body).digest(), description


# -- worlds: a service in this process, its seeded state, templates and fingerprint -----------------------


def _json(msg: Message) -> str:
    return json.dumps(json_format.MessageToDict(msg), sort_keys=True)


class World:
    """A service under test: SERVICE, a `template_<Method>(rng)` per RPC, fingerprint() and repair()."""

    SERVICE: ServiceDescriptor
    address: str
    # Request-and-reply streams that serve each message as it comes (SampleSequences): a later message may
    # be refused after earlier ones were served, and what those replies did (a sample moves the sampler)
    # stays done. Refused before any reply, such a call must still change nothing.
    SERVED_AS_THEY_COME: frozenset[str] = frozenset()

    def template(self, rpc: Rpc, rng: random.Random) -> list[Message]:
        """A valid request (a list of messages: one unless the RPC streams requests)."""
        return getattr(self, f"template_{rpc.name}")(rng)

    def fingerprint(self) -> dict[str, str]:
        raise NotImplementedError

    def repair(self, fingerprint: dict[str, str] | None = None) -> bool:
        """Put back what the templates rely on, judging from `fingerprint` (taken now if None).

        Returns whether anything had to be put back (the fingerprint is then stale).
        """
        return False

    def quiesce(self) -> None:
        """Wait until work an accepted request left running is done (before the fingerprint)."""

    def follow_up(self, rpc: Rpc, request: list[bytes], probe: Probe) -> None:
        """After `rpc` accepted `request`: use what it made or changed, through `probe` (judged like any call).

        A mutated request the service accepts may leave something odd behind
        (a buffer with edge settings, a restored snapshot, a checkpoint with an
        odd file); the calls that use it next must not fail either.
        """

    def deadline(self, rpc: Rpc) -> float:
        return DEFAULT_DEADLINE_S

    def addresses(self) -> dict[str, str]:
        """Where each service a probe may call listens (by the service's short name)."""
        return {self.SERVICE.name: self.address}

    def domain_mutations(self, rpc: Rpc) -> list[DomainMutation]:
        return []

    def close(self) -> None:
        pass


def missing_templates(worlds: dict[str, type[World]] | None = None) -> list[str]:
    """RPCs no world has a template for (every RPC of every service must have one)."""
    worlds = worlds or WORLDS
    missing = []
    for rpc in all_rpcs():
        world = worlds.get(rpc.service.full_name)
        if world is None or not callable(getattr(world, f"template_{rpc.name}", None)):
            missing.append(rpc.key)
    return missing


def _episode(eid: int, length: int) -> buffer_pb2.Episode:
    from rewind.buffer_messages import encode_episode
    from tests.support.episodes import episode

    return encode_episode(episode(eid, length))


def _episode_mutation(messages: list[Message], rng: random.Random) -> str:
    """One episode tensor changed consistently (shape, dtype and data agree), so it gets past the size check."""
    import torch

    from rewind import codec

    episodes = []
    for i, m in enumerate(messages):
        if isinstance(m, buffer_pb2.AddEpisodeRequest):
            episodes += [(i, m.episode)] if m.HasField("episode") else []
        else:
            episodes += [(i, e) for e in m.episodes]
    if not episodes:
        return "episode mutation: no episode in the request"
    where, ep = rng.choice(episodes)
    name = rng.choice(sorted(ep.fields))
    tensor = codec.decode(ep.fields[name], name).clone()
    length = tensor.shape[0] if tensor.dim() else 1
    ops: dict[str, Callable[[], torch.Tensor | None]] = {
        "NaN-filled": lambda: torch.full_like(tensor, math.nan) if tensor.is_floating_point() else tensor,
        "inf-filled": lambda: torch.full_like(tensor, math.inf) if tensor.is_floating_point() else tensor,
        "as float64": lambda: tensor.double(),
        "as int64": lambda: tensor.long(),
        "as bool": lambda: tensor.bool(),
        "as float16": lambda: tensor.half(),
        "shorter": lambda: tensor[: rng.randint(0, max(0, length - 1))],
        "one step longer": lambda: torch.cat([tensor, tensor[:1]]),
        "an extra dimension": lambda: tensor.unsqueeze(-1),
        "a scalar": lambda: tensor.reshape(-1)[:1].reshape(()),
        "zero-size, huge dimension": lambda: torch.empty((length, 0, 2**40), dtype=tensor.dtype),
        "transposed": lambda: tensor.t() if tensor.dim() == 2 else tensor,
        "dropped": lambda: None,
    }
    op = rng.choice(sorted(ops))
    value = ops[op]()
    if value is None:
        del ep.fields[name]
    else:
        codec.encode(value.contiguous(), ep.fields[name])
    if rng.random() < 0.2:
        extra = edge_string("task", rng)
        codec.encode(torch.zeros(length), ep.fields[extra])
        op += f", and an extra field {short(extra)}"
    return f"episode (consistent) [{where}].{name}: {op}"


def _restore_mutation(messages: list[Message], rng: random.Random) -> str:
    blob = b"".join(m.chunk for m in messages)
    blob, description = resign_snapshot(blob, rng)
    size = max(1, -(-len(blob) // len(messages)))
    for i, m in enumerate(messages):
        m.chunk = blob[i * size:(i + 1) * size]
    return description


class BufferWorld(World):
    """A buffer service (SMALL settings, as the tests use) with `buffer` holding episodes, `test_buffer`
    and `victim` (which DeleteBuffer removes and repair() puts back)."""

    SERVICE = BUFFER_SERVICE
    CANONICAL = ("buffer", "test_buffer", "victim")
    SEED_EPISODES = 6
    SETTINGS = buffer_pb2.BufferSettings(buffer_size=500, batch_size=4, min_history=10, horizon=2)

    def __init__(self) -> None:
        from rewind_buffer.server import serve
        from tests.support.configs import SMALL

        # The tests' settings, with a storage budget this machine can afford: an accepted edge
        # buffer_size must not let one buffer allocate gigabytes.
        self.host = serve(SMALL.replace(port=0, max_message_mb=4, max_storage_mb=512))
        self.address = self.host.address
        self.call = Caller(self.address, buffer_pb2_grpc.BufferServiceStub)
        self._eid = 1000
        self.repair()
        self.snapshot_blob = b"".join(r.chunk for r in self.call.stream(
            "Snapshot", buffer_pb2.SnapshotRequest(buffer="buffer")))

    def close(self) -> None:
        self.call.close()
        self.host.stop(grace_s=0.5)

    def _next_eid(self) -> int:
        self._eid += 1
        return self._eid

    # -- state ---------------------------------------------------------------

    def fingerprint(self) -> dict[str, str]:
        fp = {}
        for stats in self.call("ListBuffers", buffer_pb2.ListBuffersRequest()).buffers:
            fp[f"list/{stats.name}"] = _json(stats)
            fp[f"stats/{stats.name}"] = _json(self.call("GetStats", buffer_pb2.GetStatsRequest(buffer=stats.name)))
        return fp

    def repair(self, fingerprint: dict[str, str] | None = None) -> bool:
        fp = self.fingerprint() if fingerprint is None else fingerprint
        names = [key.removeprefix("list/") for key in fp if key.startswith("list/")]
        changed = False
        for name in names:
            if name not in self.CANONICAL:
                self.call("DeleteBuffer", buffer_pb2.DeleteBufferRequest(buffer=name))
                changed = True
        for name in self.CANONICAL:
            if name not in names:
                self.call("CreateBuffer", buffer_pb2.CreateBufferRequest(buffer=name))
                changed = True
        stats = json.loads(fp.get("list/buffer", "{}"))
        defaults = json.loads(fp.get("list/test_buffer", "{}")).get("settings")
        if int(stats.get("episodes", 0)) < 2 or not stats.get("ready") or stats.get("settings") != defaults:
            self.call("ResetBuffer", buffer_pb2.ResetBufferRequest(buffer="buffer"))
            self.call("LoadEpisodes", iter([buffer_pb2.LoadEpisodesRequest(
                buffer="buffer", episodes=[_episode(i, 50) for i in range(self.SEED_EPISODES)])]))
            changed = True
        return changed

    def domain_mutations(self, rpc: Rpc) -> list[DomainMutation]:
        return {"Restore": [_restore_mutation], "AddEpisode": [_episode_mutation],
                "LoadEpisodes": [_episode_mutation]}.get(rpc.name, [])

    MAKERS = ("CreateBuffer", "ResetBuffer", "Restore", "AddEpisode", "LoadEpisodes")
    SERVED_AS_THEY_COME = frozenset({"SampleSequences"})

    def follow_up(self, rpc: Rpc, request: list[bytes], probe: Probe) -> None:
        messages = parse(rpc, request)
        if rpc.name in self.MAKERS and messages and messages[0].buffer:
            self.exercise(messages[0].buffer, probe)

    def exercise(self, name: str, probe: Probe) -> None:
        """Use buffer `name` as a trainer would: stats, add, sample, stream, and a snapshot round trip."""
        probe("GetStats", "GetStats", [buffer_pb2.GetStatsRequest(buffer=name)])
        probe("ListBuffers", "ListBuffers", [buffer_pb2.ListBuffersRequest()])
        probe("AddEpisode of a valid episode", "AddEpisode",
              [buffer_pb2.AddEpisodeRequest(buffer=name, episode=_episode(self._next_eid(), 20))])
        probe("Sample", "Sample", [buffer_pb2.SampleRequest(buffer=name)])
        probe("SampleStream", "SampleStream", [buffer_pb2.SampleStreamRequest(buffer=name, num_batches=2)])
        snapshot = probe("Snapshot", "Snapshot", [buffer_pb2.SnapshotRequest(buffer=name)])
        if snapshot.code != "OK" or snapshot.truncated:
            return
        blob = b"".join(buffer_pb2.SnapshotResponse.FromString(r).chunk for r in snapshot.responses)
        size = 1 << 20
        restored = probe("Restore of its snapshot", "Restore", [
            buffer_pb2.RestoreRequest(buffer="roundtrip" if i == 0 else "", chunk=blob[i:i + size])
            for i in range(0, max(len(blob), 1), size)])
        if restored.code == "OK":
            probe("Sample after the round trip", "Sample", [buffer_pb2.SampleRequest(buffer="roundtrip")])

    # -- templates -----------------------------------------------------------

    def template_ListBuffers(self, rng):
        return [buffer_pb2.ListBuffersRequest()]

    def template_CreateBuffer(self, rng):
        return [buffer_pb2.CreateBufferRequest(buffer="made", settings=self.SETTINGS)]

    def template_ResetBuffer(self, rng):
        return [buffer_pb2.ResetBufferRequest(buffer="victim", settings=self.SETTINGS)]

    def template_SetRateLimiter(self, rng):
        # On the victim, and paused: a limiter that held calls back would stall the fuzzer's later calls.
        change = buffer_pb2.RateLimiterChange(settings=buffer_pb2.BufferSettings(
            samples_per_insert=1.0, min_size_to_sample=10, error_buffer="600", inserts_wait=False), paused=True)
        return [buffer_pb2.SetRateLimiterRequest(buffer="victim", change=change)]

    def template_DeleteBuffer(self, rng):
        return [buffer_pb2.DeleteBufferRequest(buffer="victim")]

    def template_GetStats(self, rng):
        return [buffer_pb2.GetStatsRequest(buffer="buffer")]

    def template_AddEpisode(self, rng):
        return [buffer_pb2.AddEpisodeRequest(buffer="buffer", episode=_episode(self._next_eid(), 20))]

    def template_LoadEpisodes(self, rng):
        return [buffer_pb2.LoadEpisodesRequest(buffer="buffer", episodes=[_episode(self._next_eid(), 12),
                                                                         _episode(self._next_eid(), 8)]),
                buffer_pb2.LoadEpisodesRequest(episodes=[_episode(self._next_eid(), 10)])]

    def template_Sample(self, rng):
        return [buffer_pb2.SampleRequest(buffer="buffer")]

    def template_SampleStream(self, rng):
        return [buffer_pb2.SampleStreamRequest(buffer="buffer", prefetch=2, num_batches=3)]

    def template_SampleSequences(self, rng):
        return [buffer_pb2.SampleSequencesRequest(buffer="buffer", sequences=rng.randint(0, 8)),
                buffer_pb2.SampleSequencesRequest(sequences=rng.randint(0, 8))]

    def template_Snapshot(self, rng):
        request = buffer_pb2.SnapshotRequest(buffer="buffer", chunk_bytes=4096)
        if rng.random() < 0.5:
            request.capture_id = self.call("Capture", buffer_pb2.CaptureRequest(buffer="buffer")).capture_id
        return [request]

    def template_SnapshotBlocks(self, rng):
        request = buffer_pb2.SnapshotBlocksRequest(buffer="buffer", chunk_bytes=4096)
        if rng.random() < 0.5:
            request.capture_id = self.call("Capture", buffer_pb2.CaptureRequest(buffer="buffer")).capture_id
        if rng.random() < 0.5:
            request.stored_blocks.append("0" * 64)
        return [request]

    def template_UploadBlocks(self, rng):
        # The template names every block the buffer has as stored, so none is needed and the empty grants
        # (sent with the start; the service reads them after its BlocksNeeded) answer it. Mutations that
        # make a block needed find no grant (a mutated grant names no needed block): nothing is PUT.
        stream = self.call.stream("SnapshotBlocks", buffer_pb2.SnapshotBlocksRequest(buffer="buffer"))
        stored = [b.sha256 for r in stream if r.HasField("index") for b in r.index.blocks]
        start = buffer_pb2.SnapshotBlocksRequest(buffer="buffer", chunk_bytes=4096, stored_blocks=stored)
        if rng.random() < 0.5:
            start.capture_id = self.call("Capture", buffer_pb2.CaptureRequest(buffer="buffer")).capture_id
        return [buffer_pb2.UploadBlocksRequest(start=start), buffer_pb2.UploadBlocksRequest(grants={})]

    def template_Capture(self, rng):
        stats = self.call("GetStats", buffer_pb2.GetStatsRequest(buffer="buffer")).stats
        return [buffer_pb2.CaptureRequest(buffer="buffer", expect_episodes_added=stats.episodes_added)]

    def template_Restore(self, rng):
        blob, size = self.snapshot_blob, 4096
        return [buffer_pb2.RestoreRequest(buffer="restored" if i == 0 else "", chunk=blob[i:i + size])
                for i in range(0, len(blob), size)]


# -- checkpoint service ------------------------------------------------------------------------------


def file_listing(root: Path) -> Callable[[], dict[str, str]]:
    """The files (size and sha256) and folders under a file:// store's root."""

    def listing() -> dict[str, str]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            for d in dirnames:
                out[f"store/{os.path.normpath(os.path.join(rel, d))}/"] = "dir"
            for f in filenames:
                data = Path(dirpath, f).read_bytes()
                out[f"store/{os.path.normpath(os.path.join(rel, f))}"] = \
                    f"{len(data)} {hashlib.sha256(data).hexdigest()[:16]}"
        return out

    return listing


def s3_listing(client, bucket: str, prefix: str) -> Callable[[], dict[str, str]]:
    """The objects (size and ETag) under an S3 store's prefix."""

    def listing() -> dict[str, str]:
        out = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", ()):
                out[f"store/{obj['Key']}"] = f"{obj['Size']} {obj['ETag']}"
        return out

    return listing


WEIGHTS = bytes(range(256)) * 11 + b"rewind"      # 2,822 bytes: two chunks of a Save
AGENT, RUN, VICTIMS, SAVES = "agent", "run", "victims", "saves"
OFF = checkpoint_pb2.RetentionPolicy(keep_last=0)  # retention off: the seeded runs keep what they hold


def save_requests(agent: str, run: str, step: int, *, files: dict[str, bytes], buffers=(), metrics=None,
                  retention: checkpoint_pb2.RetentionPolicy | None = None, resumed_from: str = "",
                  chunk: int = 2000) -> list[checkpoint_pb2.SaveRequest]:
    """A whole Save stream: header, each file's chunks, commit."""
    header = checkpoint_pb2.SaveHeader(
        agent_id=agent, run_id=run, step=step, episode=step // 10, metrics=metrics or {},
        files=[checkpoint_pb2.FileAnnouncement(name=n, size=len(d)) for n, d in files.items()],
        buffers=list(buffers), resumed_from=resumed_from)
    header.config.update({"lr": 0.001, "task": "pendulum-swingup", "layers": [256, 256]})
    header.extra.update({"note": "fuzz"})
    header.versions.update({"python": "3.11.7", "torch": "2.13.0+cpu", "torchrl": "0.14.1"})
    if retention is not None:
        header.retention.CopyFrom(retention)
    requests = [checkpoint_pb2.SaveRequest(header=header)]
    for name, data in files.items():
        for i in range(0, len(data), chunk):
            requests.append(checkpoint_pb2.SaveRequest(chunk=checkpoint_pb2.FileChunk(file=name,
                                                                                      data=data[i:i + chunk])))
    commit = checkpoint_pb2.Commit(files=[checkpoint_pb2.FileInfo(name=n, size=len(d),
                                                                  sha256=hashlib.sha256(d).hexdigest())
                                          for n, d in files.items()])
    return requests + [checkpoint_pb2.SaveRequest(commit=commit)]


def _rename_file_mutation(messages: list[Message], rng: random.Random) -> str:
    """A Save's file renamed everywhere (header, chunks, commit), so only the name itself is in question."""
    header = messages[0].header
    old = rng.choice([f.name for f in header.files])
    new = edge_string(old, rng)
    for m in messages:
        for item in (*m.header.files, *m.commit.files):
            if item.name == old:
                item.name = new
        if m.HasField("chunk") and m.chunk.file == old:
            m.chunk.file = new
    return f"file {old!r} renamed to {short(new)} everywhere"


def _struct_mutation(messages: list[Message], rng: random.Random) -> str:
    """A value of the header's config or extra (google.protobuf.Struct) that JSON cannot hold, or an odd key."""
    name = rng.choice(("config", "extra"))
    struct_ = getattr(messages[0].header, name)
    op = rng.choice(("NaN", "inf", "-inf", "a 100,000-character key", "an empty key", "nested 90 deep"))
    if op in ("NaN", "inf", "-inf"):
        struct_.fields["fuzz"].number_value = float(op.replace("NaN", "nan"))
    elif op == "nested 90 deep":
        _deep_struct(struct_, 90)
    else:
        struct_.fields["k" * 100_000 if op.startswith("a 100") else ""].string_value = "v"
    return f"header.{name}: {op}"


def _many_files_mutation(messages: list[Message], rng: random.Random) -> str:
    count = rng.choice((1001, 5000))
    for i in range(count):
        messages[0].header.files.add(name=f"f{i}", size=0)
    return f"header.files: {count} empty files announced"


def _onto(probe: Probe, service: str) -> Probe:
    """`probe`, aimed at another service's methods ("BufferService")."""
    return lambda label, method, requests: probe(label, f"{service}/{method}", requests)


class CheckpointWorld(World):
    """A checkpoint service over `store_url`, with committed checkpoints:

    agent/run/step 100 (weights.pt, empty.bin and a snapshot of the buffer world's `buffer`),
    agent/run/step 200, agent/victims/step 1 (which DeleteCheckpoint removes; repair() saves it again),
    and agent/run's history files (status.json, metrics.csv).
    Saves go to agent/saves, at a new step each time. The fingerprint holds the buffer world's too.
    """

    SERVICE = CHECKPOINT_SERVICE
    SEEDED = {(RUN, 100), (RUN, 200), (VICTIMS, 1)}

    def __init__(self, store_url: str, buffers: BufferWorld, store_listing: Callable[[], dict[str, str]]) -> None:
        from rewind_checkpoint.server import serve
        from tests.support.configs import checkpoint_config

        self.buffers = buffers
        self.store_listing = store_listing
        self.host = serve(checkpoint_config(store_url, buffer_timeout_s=10.0))
        self.address = self.host.address
        self.call = Caller(self.address, checkpoint_pb2_grpc.CheckpointServiceStub)
        self._step = 1000
        self.paths: dict[int, str] = {}
        self._retention_off: str | None = None
        self.repair()
        for request in (self.template_PutRunFile(random.Random(0)), self.template_PutRunFile(random.Random(1))):
            self.call("PutRunFile", request[0])

    def close(self) -> None:
        self.call.close()
        self.host.stop(grace_s=0.5)

    def deadline(self, rpc: Rpc) -> float:
        return 10.0 if rpc.name in ("Save", "SaveDirect", "RestoreBuffers") else DEFAULT_DEADLINE_S

    def addresses(self) -> dict[str, str]:
        return {self.SERVICE.name: self.address, BUFFER_SERVICE.name: self.buffers.address}

    def domain_mutations(self, rpc: Rpc) -> list[DomainMutation]:
        saves = ("Save", "SaveDirect")
        return [_rename_file_mutation, _many_files_mutation, _struct_mutation] if rpc.name in saves else []

    def follow_up(self, rpc: Rpc, request: list[bytes], probe: Probe) -> None:
        messages = parse(rpc, request)
        if rpc.name in ("Save", "SaveDirect"):
            headers = [m.header for m in messages if m.HasField("header")]
            if headers:
                self._use_checkpoint(headers[0], probe)
        elif rpc.name == "SetRetention" and messages:
            run = {"agent_id": messages[0].agent_id, "run_id": messages[0].run_id}
            probe("GetRetention", "GetRetention", [checkpoint_pb2.GetRetentionRequest(**run)])
            probe("Lookup best by the run's retention metric", "Lookup",
                  [checkpoint_pb2.LookupRequest(**run, best=checkpoint_pb2.BestSelector())])
        elif rpc.name == "PutRunFile" and messages:
            where = {"agent_id": messages[0].agent_id, "run_id": messages[0].run_id}
            probe("GetRunFile of what it stored", "GetRunFile",
                  [checkpoint_pb2.GetRunFileRequest(**where, name=messages[0].name)])
            probe("ListRuns", "ListRuns", [checkpoint_pb2.ListRunsRequest()])
        elif rpc.name == "RestoreBuffers" and messages:
            on_buffers = _onto(probe, "BufferService")
            for target in messages[0].targets:
                if target.address == self.buffers.address and target.buffer:
                    on_buffers("GetStats", "GetStats", [buffer_pb2.GetStatsRequest(buffer=target.buffer)])
                    on_buffers("Sample", "Sample", [buffer_pb2.SampleRequest(buffer=target.buffer)])

    def _use_checkpoint(self, header: checkpoint_pb2.SaveHeader, probe: Probe) -> None:
        """A committed checkpoint: listed, looked up (verified), downloaded, its buffers restored."""
        ref = checkpoint_pb2.CheckpointRef(agent_id=header.agent_id, run_id=header.run_id, step=header.step)
        run = {"agent_id": header.agent_id, "run_id": header.run_id}
        probe("ListRuns", "ListRuns", [checkpoint_pb2.ListRunsRequest()])
        probe("ListCheckpoints", "ListCheckpoints", [checkpoint_pb2.ListCheckpointsRequest(**run)])
        probe("Lookup of its step", "Lookup", [checkpoint_pb2.LookupRequest(**run, step=header.step)])
        probe("Lookup latest", "Lookup", [checkpoint_pb2.LookupRequest(**run, latest=True)])
        probe("Download", "Download", [checkpoint_pb2.DownloadRequest(ref=ref)])
        if header.buffers:
            target = checkpoint_pb2.BufferTarget(address=self.buffers.address, buffer="restored",
                                                 file=header.buffers[0].file)
            probe("RestoreBuffers", "RestoreBuffers", [checkpoint_pb2.RestoreBuffersRequest(ref=ref,
                                                                                            targets=[target])])

    # -- state ---------------------------------------------------------------

    def _catalog(self):
        bindings = getattr(self.host, "bindings", [])
        return getattr(bindings[0].servicer, "catalog", None) if bindings else None

    def fingerprint(self) -> dict[str, str]:
        fp = {f"buffers/{k}": v for k, v in self.buffers.fingerprint().items()}
        for run in self.call("ListRuns", checkpoint_pb2.ListRunsRequest()).runs:
            where = f"{run.agent_id}/{run.run_id}"
            fp[f"run/{where}"] = _json(run)
            ref = checkpoint_pb2.ListCheckpointsRequest(agent_id=run.agent_id, run_id=run.run_id)
            for ckpt in self.call("ListCheckpoints", ref).checkpoints:
                fp[f"checkpoint/{where}/{ckpt.step}"] = _json(ckpt)
            fp[f"retention/{where}"] = _json(self.call("GetRetention", checkpoint_pb2.GetRetentionRequest(
                agent_id=run.agent_id, run_id=run.run_id)))
        fp.update(self.store_listing())
        catalog = self._catalog()
        if catalog is not None and hasattr(catalog, "active_uploads"):
            fp["uploads in progress"] = repr(sorted(map(str, catalog.active_uploads)))
        return fp

    def repair(self, fingerprint: dict[str, str] | None = None) -> bool:
        fp = self.fingerprint() if fingerprint is None else fingerprint
        changed = self.buffers.repair({k.removeprefix("buffers/"): v for k, v in fp.items()
                                       if k.startswith("buffers/")})
        for run in (RUN, VICTIMS):
            if self._retention_off is None or fp.get(f"retention/{AGENT}/{run}") != self._retention_off:
                self.call("SetRetention", checkpoint_pb2.SetRetentionRequest(agent_id=AGENT, run_id=run,
                                                                             retention=OFF))
                changed = True
        if self._retention_off is None:
            self._retention_off = _json(self.call("GetRetention", checkpoint_pb2.GetRetentionRequest(
                agent_id=AGENT, run_id=RUN)))
        present = set()
        for key, value in fp.items():
            agent, run, step = (key.split("/") + ["", "", "", ""])[1:4]
            if key.startswith("checkpoint/") and agent == AGENT and run in (RUN, VICTIMS):
                present.add((run, int(step)))
                if run == RUN:
                    self.paths[int(step)] = json.loads(value).get("path", "")
        for run, step in sorted(self.SEEDED - present, key=lambda rs: rs[1]):
            self._seed(run, step)
            changed = True
        return changed

    def _seed(self, run: str, step: int) -> None:
        files = {"weights.pt": WEIGHTS, "empty.bin": b""} if step == 100 else {"weights.pt": WEIGHTS[:1000]}
        buffers = [checkpoint_pb2.BufferSource(address=self.buffers.address, buffer="buffer")] if step == 100 else []
        response = self.call("Save", iter(save_requests(AGENT, run, step, files=files, buffers=buffers,
                                                        metrics={"eval_return": step / 100})))
        if run == RUN:
            self.paths[step] = response.checkpoint.path

    # -- templates -----------------------------------------------------------

    def _ref(self, rng: random.Random, step: int = 100) -> checkpoint_pb2.CheckpointRef:
        if rng.random() < 0.3 and self.paths.get(step):
            return checkpoint_pb2.CheckpointRef(path=self.paths[step])
        return checkpoint_pb2.CheckpointRef(agent_id=AGENT, run_id=RUN, step=step)

    def template_Save(self, rng):
        self._step += 1
        source = checkpoint_pb2.BufferSource(address=self.buffers.address, buffer="buffer")
        return save_requests(AGENT, SAVES, self._step, files={"weights.pt": WEIGHTS, "empty.bin": b""},
                             buffers=[source], metrics={"eval_return": 1.5, "loss": 0.25},
                             retention=checkpoint_pb2.RetentionPolicy(keep_last=2, metric="eval_return", mode="max"),
                             resumed_from=f"{AGENT}/{RUN}/step-0000000100")

    def template_SaveDirect(self, rng):
        # Save's stream as SaveDirectRequests (the same fields). Announcements without a sha256 are granted
        # nothing, so the chunks are welcome on S3 too (tests/service/test_direct_files.py covers grants).
        return [checkpoint_pb2.SaveDirectRequest.FromString(m.SerializeToString()) for m in self.template_Save(rng)]

    def template_Download(self, rng):
        return [checkpoint_pb2.DownloadRequest(ref=self._ref(rng), file=rng.choice(("", "weights.pt")),
                                               chunk_bytes=1024)]

    def template_ListRuns(self, rng):
        return [checkpoint_pb2.ListRunsRequest(agent_id=AGENT)]

    def template_ListCheckpoints(self, rng):
        return [checkpoint_pb2.ListCheckpointsRequest(agent_id=AGENT, run_id=RUN)]

    def template_Lookup(self, rng):
        request = checkpoint_pb2.LookupRequest(agent_id=AGENT, run_id=RUN, skip_verify=rng.random() < 0.3)
        selector = rng.choice(("latest", "best", "step", "path"))
        if selector == "latest":
            request.latest = True
        elif selector == "best":
            request.best.CopyFrom(checkpoint_pb2.BestSelector(metric="eval_return", mode="max"))
        elif selector == "step":
            request.step, request.fall_back = 100, rng.random() < 0.5
        else:
            request.path = self.paths.get(200) or f"{AGENT}/{RUN}/step-0000000200"
        return [request]

    def template_RestoreBuffers(self, rng):
        target = checkpoint_pb2.BufferTarget(address=self.buffers.address, buffer="restored", file="buffer.snapshot")
        return [checkpoint_pb2.RestoreBuffersRequest(ref=self._ref(rng), targets=[target])]

    def template_DeleteCheckpoint(self, rng):
        return [checkpoint_pb2.DeleteCheckpointRequest(ref=checkpoint_pb2.CheckpointRef(
            agent_id=AGENT, run_id=VICTIMS, step=1))]

    def template_GetRetention(self, rng):
        return [checkpoint_pb2.GetRetentionRequest(agent_id=AGENT, run_id=RUN)]

    def template_SetRetention(self, rng):
        policy = checkpoint_pb2.RetentionPolicy(keep_last=5, keep_every=100, keep_best=1, metric="eval_return",
                                                mode="min")
        return [checkpoint_pb2.SetRetentionRequest(agent_id=AGENT, run_id=RUN, retention=policy)]

    def template_PutRunFile(self, rng):
        if rng.random() < 0.5:
            content = json.dumps({"format": "rewind.run-status/1", "state": "running", "step": 200,
                                  "eval_return": None, "message": ""}).encode()
            return [checkpoint_pb2.PutRunFileRequest(agent_id=AGENT, run_id=RUN, name="status.json", content=content)]
        content = b"step,episode,kind,episode_return\n100,1,train,-1200.5\n200,2,eval,-850\n"
        return [checkpoint_pb2.PutRunFileRequest(agent_id=AGENT, run_id=RUN, name="metrics.csv", content=content)]

    def template_GetRunFile(self, rng):
        return [checkpoint_pb2.GetRunFileRequest(agent_id=AGENT, run_id=RUN,
                                                 name=rng.choice(("status.json", "metrics.csv")))]


# -- trainer service ---------------------------------------------------------------------------------


class TrainerWorld(World):
    """The real TrainerServicer and Control in a ServiceHost, over a stand-in loop.

    A training run is too slow to fuzz on a small machine, and a Stop ends it;
    the servicer reads the trainer's state and leaves requests in Control, so a
    stand-in trainer (its status fields) and a thread that serves checkpoint
    requests as the loop does at its boundaries exercise the same service code.
    After an accepted Stop, repair() gives the servicer a fresh Control.
    """

    SERVICE = TRAINER_SERVICE

    def __init__(self) -> None:
        from rewind_runtime.host import ServiceHost
        from rewind_runtime.threads import ThreadChoice
        from rewind_trainer import service
        from rewind_trainer.checkpointer import CheckpointStatus
        from rewind_trainer.state import LoopState
        from rewind_trainer.weights import WeightsBoard

        self._status_class = CheckpointStatus
        state = LoopState(step=4200, episode=21, recent_returns=[1.0, 2.5], losses={"consistency": 0.5})
        self.trainer = SimpleNamespace(settings=SimpleNamespace(task="pendulum-swingup", steps=10_000, collectors=0),
                                       state=state, phase="training", steps_per_second=12.5, updates=4100,
                                       agent=SimpleNamespace(mode="mppi"))
        self.checkpointer = SimpleNamespace(status=CheckpointStatus(), busy=False)
        # Published at the largest version there is: whatever min_version a mutated request asks for is met,
        # so no fuzzed call waits for its deadline.
        weights = WeightsBoard(generation=2, enabled=True)
        weights.publish(2**63 - 1, 4200, b"policy.safetensors bytes" * 100_000)  # 2.4 MB: three chunks
        self.servicer = service.TrainerServicer(service.Control(), self.trainer, self.checkpointer,
                                                service.RunIdentity("agent", "run"), ThreadChoice(1, "fuzz"),
                                                weights)
        self.host = ServiceHost([service.binding(self.servicer)], port=0, grace_s=0.5)
        self.host.start()
        self.address = self.host.address
        self.call = Caller(self.address, trainer_pb2_grpc.TrainerServiceStub)
        self._stop = threading.Event()
        self._loop = threading.Thread(target=self._serve_checkpoints, name="fuzz-trainer-loop", daemon=True)
        self._loop.start()

    def _serve_checkpoints(self) -> None:
        """What the loop does at a boundary: take the checkpoint requests and answer them."""
        while not self._stop.wait(0.005):
            waiters = self.servicer.control.take_checkpoint_waiters()
            for waiter in waiters:
                status = self.checkpointer.status
                step = self.trainer.state.step
                self.checkpointer.status = self._status_class(
                    path=f"file:///fuzz/agent/run/step-{step:010d}", step=step, saves=status.saves + 1)
                waiter.set_result((step, self.checkpointer.status.path))

    def close(self) -> None:
        self._stop.set()
        self.call.close()
        self.host.stop(grace_s=0.5)

    def quiesce(self) -> None:
        deadline = time.monotonic() + 2.0
        while self.servicer.control.checkpoint_waiters and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.01)  # the answer is set after the waiters are taken

    def fingerprint(self) -> dict[str, str]:
        status = self.call("GetStatus", trainer_pb2.GetStatusRequest()).status
        return {"status": _json(status), "stopping": str(self.servicer.control.stopping.is_set()),
                "waiting checkpoints": str(len(self.servicer.control.checkpoint_waiters))}

    def repair(self, fingerprint: dict[str, str] | None = None) -> bool:
        from rewind_trainer import service

        if not self.servicer.control.stopping.is_set():
            return False
        self.servicer.control = service.Control()
        return True

    def follow_up(self, rpc: Rpc, request: list[bytes], probe: Probe) -> None:
        if rpc.name == "Stop":
            probe("GetStatus", "GetStatus", [trainer_pb2.GetStatusRequest()])
            probe("CreateCheckpoint while stopping", "CreateCheckpoint", [trainer_pb2.CreateCheckpointRequest()])

    def template_GetStatus(self, rng):
        return [trainer_pb2.GetStatusRequest()]

    def template_CreateCheckpoint(self, rng):
        return [trainer_pb2.CreateCheckpointRequest(wait=rng.random() < 0.5)]

    def template_Stop(self, rng):
        return [trainer_pb2.StopRequest()]

    def template_GetWeights(self, rng):
        return [trainer_pb2.GetWeightsRequest(min_version=rng.choice([0, 1, 4200, -1, 2**62]))]


WORLDS: dict[str, type[World]] = {
    BUFFER_SERVICE.full_name: BufferWorld,
    CHECKPOINT_SERVICE.full_name: CheckpointWorld,
    TRAINER_SERVICE.full_name: TrainerWorld,
}


# -- the server's log --------------------------------------------------------------------------------


class ServerLog(logging.Handler):
    """Warnings and errors logged in this process (the in-process services'), with their tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._records: list[str] = []
        self._lock = threading.Lock()
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self._formatter.formatException(record.exc_info)
        with self._lock:
            self._records.append(text)

    def take(self) -> list[str]:
        with self._lock:
            records, self._records = self._records, []
        return records

    def __enter__(self) -> ServerLog:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(min(root.level or logging.WARNING, logging.WARNING))
        return self

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


# -- fuzzing one RPC ---------------------------------------------------------------------------------


@dataclass
class Failure:
    rpc: str
    index: int                     # -1: the template itself
    kind: str                      # status, lost answer, deadline, state, response, follow-up, template, ...
    code: str
    details: str
    mutation: str
    log: list[str] = field(default_factory=list)

    def signature(self) -> tuple[str, ...]:
        """What makes two failures the same bug: RPC, kind, code, the message's shape, the exception raised."""
        details = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", self.details)
        details = re.sub(r"\d+", "N", details)[:120]
        return (self.rpc, self.kind, self.code, details, re.sub(r"\d+", "N", exception_of(self.log)))

    def to_json(self) -> dict:
        return {"rpc": self.rpc, "index": self.index, "kind": self.kind, "code": self.code,
                "details": self.details[:2000], "mutation": self.mutation[:500],
                "log": [entry[-4000:] for entry in self.log[:3]]}


def exception_of(log: list[str]) -> str:
    """The exception a server log's first traceback ends with ("" when none)."""
    for entry in log:
        lines = [line for line in entry.splitlines() if line.strip()]
        if len(lines) > 1 and "Traceback" in entry:
            return lines[-1][:200]
    return ""


@dataclass
class RpcReport:
    rpc: str
    store: str = ""                # the checkpoint service's store ("file", "s3"), when it matters
    seed: int = 0
    counts: Counter = field(default_factory=Counter)
    truncated: int = 0
    follow_ups: Counter = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def calls(self) -> int:
        return sum(self.counts.values())

    @property
    def name(self) -> str:
        return f"{self.rpc} [{self.store}]" if self.store else self.rpc

    def distinct(self) -> list[tuple[Failure, int]]:
        """One example of each distinct failure, with how often it happened."""
        seen: dict[tuple, list] = {}
        for f in self.failures:
            seen.setdefault(f.signature(), [f, 0])[1] += 1
        return [(f, n) for f, n in seen.values()]

    def explain(self, limit: int = 25) -> str:
        lines = [f"{self.name}: {len(self.failures)} failure(s) in {self.calls} calls "
                 f"({format_counts(self.counts)}); distinct:"]
        for f, n in self.distinct()[:limit]:
            lines.append(f"  [{f.kind}] x{n} {f.code}: {f.details[:300]}")
            lines.append(f"      e.g. request {f.index}: {f.mutation[:300]}")
            exc = exception_of(f.log)
            if exc:
                lines.append(f"      server raised: {exc}")
        store = f" --store {self.store}" if self.store else ""
        lines.append(f"  replay one: python -m bench.fuzz --rpc {self.rpc}{store} --seed {self.seed} "
                     "--only INDEX --verbose")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"rpc": self.rpc, "store": self.store, "calls": self.calls, "counts": dict(self.counts),
                "truncated_streams": self.truncated,
                "follow_up_counts": dict(self.follow_ups),
                "seconds": round(self.seconds, 2), "failures": len(self.failures),
                "distinct_failures": [{**f.to_json(), "occurrences": n} for f, n in self.distinct()],
                "all_failures": [f.to_json() for f in self.failures[:200]]}


def format_counts(counts: Counter) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.most_common())


def _diff(before: dict[str, str], after: dict[str, str], limit: int = 4) -> str:
    changes = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            what = "added" if key not in before else "removed" if key not in after else "changed"
            detail = f": {short(before.get(key), 200)} -> {short(after.get(key), 200)}" if what == "changed" else ""
            changes.append(f"{key} {what}{detail}")
    more = f" (+{len(changes) - limit} more)" if len(changes) > limit else ""
    return "; ".join(changes[:limit]) + more


class Fuzzer:
    """Fuzzes the RPCs of one world: `run(rpc, count)` -> RpcReport."""

    def __init__(self, world: World, *, seed: int, server_log: ServerLog | None = None,
                 on_call: Callable[[int, Mutation, CallResult], None] | None = None) -> None:
        self.world = world
        self.seed = seed
        self.log = server_log or ServerLog()
        self.on_call = on_call
        self.channel, self.metadata = connect(world.address)
        self._channels = {world.address: (self.channel, self.metadata)}

    def close(self) -> None:
        for channel, _ in self._channels.values():
            channel.close()

    def _channel(self, address: str) -> tuple[grpc.Channel, tuple]:
        if address not in self._channels:
            self._channels[address] = connect(address)
        return self._channels[address]

    def _prober(self, rpc: Rpc, index: int, mutation: Mutation, report: RpcReport, used: list) -> Probe:
        def probe(label: str, method: str, requests: list[Message]) -> CallResult:
            target = rpc_by_key(method if "/" in method else f"{self.world.SERVICE.name}/{method}")
            channel, metadata = self._channel(self.world.addresses()[target.service.name])
            self.log.take()
            deadline = min(self.world.deadline(target), FOLLOW_UP_DEADLINE_S)
            result = invoke(channel, metadata, target, _serialize(requests), deadline)
            self.world.quiesce()
            used.append(target.key)
            report.follow_ups[result.code] += 1
            if self.on_call is not None:
                self.on_call(index, Mutation([], f"  follow-up: {label} ({target.key})"), result)
            problem = self._problem(target, result, deadline)
            if problem is not None:
                report.failures.append(Failure(
                    rpc.key, index, "follow-up", result.code,
                    f"{label} ({target.key}) after the accepted request: {problem[1]}", mutation.description,
                    self.log.take()))
            return result

        return probe

    def _problem(self, rpc: Rpc, result: CallResult, deadline: float | None = None) -> tuple[str, str] | None:
        """(kind, details) when a call's outcome is a failure whatever the request was."""
        deadline = self.world.deadline(rpc) if deadline is None else deadline
        if result.code in FAILING_CODES:
            return "status", result.details
        if any(sign in result.details for sign in LOST_ANSWER):
            return "lost answer", f"the service's answer never arrived: {result.details}"
        if result.code == "DEADLINE_EXCEEDED":
            return "deadline", f"no answer within {deadline:.0f}s ({result.details})"
        return None

    def run(self, rpc: Rpc, count: int, only: Iterable[int] | None = None) -> RpcReport:
        """The template (index -1), then `count` mutated requests (or just the indices in `only`)."""
        report = RpcReport(rpc.key, seed=self.seed)
        started = time.monotonic()
        baseline = self._baseline(rpc, report, -1, "before the first request")
        for index in ([-1, *range(count)] if only is None else list(only)):
            if baseline is None:
                baseline = self._baseline(rpc, report, index, "repairing after a broken fingerprint")
                if baseline is None:
                    break
            baseline = self._one(rpc, index, baseline, report)
        report.seconds = time.monotonic() - started
        return report

    def mutation(self, rpc: Rpc, index: int) -> Mutation:
        """Request `index` of `rpc` (index -1: the unmutated template)."""
        messages = self.world.template(rpc, request_rng(self.seed, rpc, index, "template"))
        if index < 0:
            return Mutation(_serialize(messages), "none (the template)")
        return mutate(rpc, messages, request_rng(self.seed, rpc, index), self.world.domain_mutations(rpc))

    def _baseline(self, rpc: Rpc, report: RpcReport, index: int, when: str) -> dict[str, str] | None:
        try:
            self.world.repair()
        except Exception as exc:
            report.failures.append(Failure(rpc.key, index, "repair", _code(exc), f"repair failed {when}: {exc}",
                                           "", self.log.take()))
            return None
        return self._fingerprint(rpc, report, index, "")

    def _fingerprint(self, rpc: Rpc, report: RpcReport, index: int, mutation: str) -> dict[str, str] | None:
        try:
            return self.world.fingerprint()
        except Exception as exc:
            report.failures.append(Failure(rpc.key, index, "fingerprint", _code(exc),
                                           f"the fingerprint failed after this request: {exc}", mutation,
                                           self.log.take()))
            return None

    def _settled(self, rpc: Rpc, report: RpcReport, index: int, mutation: str) -> dict[str, str] | None:
        """The fingerprint once it stops changing (work a cancelled stream left running ends first)."""
        previous = self._fingerprint(rpc, report, index, mutation)
        for _ in range(20):
            time.sleep(0.15)
            current = self._fingerprint(rpc, report, index, mutation)
            if current == previous:
                return current
            previous = current
        return previous

    def _one(self, rpc: Rpc, index: int, baseline: dict[str, str], report: RpcReport) -> dict[str, str] | None:
        self.log.take()
        mutation = self.mutation(rpc, index)
        result = invoke(self.channel, self.metadata, rpc, mutation.frames, self.world.deadline(rpc))
        self.world.quiesce()
        settle = result.truncated or result.code in ("DEADLINE_EXCEEDED", "CANCELLED")
        after = (self._settled if settle else self._fingerprint)(rpc, report, index, mutation.description)
        log = self.log.take()
        report.counts[result.code] += 1
        report.truncated += result.truncated
        if self.on_call is not None:
            self.on_call(index, mutation, result)
        for kind, details in self._judge(rpc, index, result, baseline, after):
            report.failures.append(Failure(rpc.key, index, kind, result.code, details, mutation.description, log))
        probed: list[str] = []
        if result.code == "OK" and after is not None:
            try:
                self.world.follow_up(rpc, mutation.frames, self._prober(rpc, index, mutation, report, probed))
            except Exception as exc:
                report.failures.append(Failure(rpc.key, index, "follow-up", _code(exc), f"follow-up failed: {exc}",
                                               mutation.description, self.log.take()))
        if after is None:
            return None
        if after == baseline and not probed:
            return after
        current = self._fingerprint(rpc, report, index, mutation.description) if probed else after
        if current is None:
            return None
        try:
            changed = self.world.repair(current)
        except Exception as exc:
            report.failures.append(Failure(rpc.key, index, "repair", _code(exc), f"repair failed: {exc}",
                                           mutation.description, self.log.take()))
            return None
        return self._fingerprint(rpc, report, index, mutation.description) if changed else current

    def _judge(self, rpc: Rpc, index: int, result: CallResult, before: dict[str, str],
               after: dict[str, str] | None) -> list[tuple[str, str]]:
        found = []
        if index < 0 and result.code != "OK":
            found.append(("template", f"the unmutated template was refused: {result.details}"))
        problem = self._problem(rpc, result)
        if problem is not None:
            found.append(problem)
        if result.code == "OK":
            for i, response in enumerate(result.responses):
                try:
                    rpc.response_class.FromString(response)
                except Exception as exc:
                    found.append(("response", f"response {i} does not parse: {exc}"))
                    break
        elif after is not None and after != before and not (
                rpc.name in self.world.SERVED_AS_THEY_COME and result.responses):
            found.append(("state", f"refused with {result.code} ({short(result.details, 160)}) but state changed: "
                                   f"{_diff(before, after)}"))
        return found


@contextmanager
def memory_cap(headroom_bytes: int = 4 * 2**30) -> Iterator[None]:
    """Cap this process's address space at its present size plus `headroom_bytes` (Linux).

    The services run in this process; a request they wrongly accept (a huge
    batch_size, then a Sample) can ask for tens of GiB, which the kernel grants
    lazily and the OOM killer collects, taking the machine's other work with it.
    Under the cap the allocation fails at once and shows up as that request's status.
    """
    try:
        import resource

        size = int(re.search(r"VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    except (ImportError, OSError, AttributeError):
        yield
        return
    cap = size + headroom_bytes
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _code(exc: BaseException) -> str:
    return exc.code().name if isinstance(exc, grpc.RpcError) else type(exc).__name__


def fuzz_rpc(world: World, rpc: Rpc, *, count: int, seed: int = DEFAULT_SEED, server_log: ServerLog | None = None,
             store: str = "") -> RpcReport:
    """Fuzz one RPC of `world` with `count` mutated requests (and its template first)."""
    fuzzer = Fuzzer(world, seed=seed, server_log=server_log)
    try:
        report = fuzzer.run(rpc, count)
    finally:
        fuzzer.close()
    report.store = store
    return report


def table(reports: list[RpcReport]) -> str:
    """One line per RPC: calls, status counts, failures, seconds."""
    width = max([len(r.name) for r in reports] + [3])
    lines = [f"{'RPC':<{width}}  {'calls':>5}  {'fail':>4}  {'secs':>6}  {'follow-ups':>10}  statuses"]
    for r in reports:
        trunc = f" ({r.truncated} streams cut at {MAX_RESPONSES})" if r.truncated else ""
        lines.append(f"{r.name:<{width}}  {r.calls:>5}  {len(r.failures):>4}  {r.seconds:>6.1f}  "
                     f"{sum(r.follow_ups.values()):>10}  {format_counts(r.counts)}{trunc}")
    return "\n".join(lines)
