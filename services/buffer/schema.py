"""Episode validation: the four fields, their lengths, and the fixed schema.

The first episode a buffer receives fixes each field's dtype and per-step
shape; every later episode must match it exactly. Errors name the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rewind.codec import TORCH_TO_WIRE, dtype_name
from rewind.errors import InvalidArgument

FIELDS = ("obs", "action", "reward", "done")
# reward and done are one scalar per step; obs and action have any shape.
SCALAR_FIELDS = ("reward", "done")


@dataclass(frozen=True)
class FieldSpec:
    """The dtype and per-step shape of one episode field."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def step_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class EpisodeSchema:
    """Per-field dtype and per-step shape, fixed by a buffer's first episode."""

    fields: dict[str, FieldSpec]

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], batch_dims: int = 1) -> EpisodeSchema:
        """The schema of already-validated tensors with `batch_dims` leading dims."""
        return cls({k: FieldSpec(tensors[k].dtype, tuple(tensors[k].shape[batch_dims:])) for k in FIELDS})

    @property
    def step_bytes(self) -> int:
        """Bytes one transition takes in storage."""
        return sum(spec.step_bytes for spec in self.fields.values())

    def to_json(self) -> dict:
        return {k: {"dtype": dtype_name(s.dtype), "shape": list(s.shape)} for k, s in self.fields.items()}

    @classmethod
    def from_json(cls, data: dict) -> EpisodeSchema:
        return cls({k: FieldSpec(getattr(torch, v["dtype"]), tuple(v["shape"])) for k, v in data.items()})

    def to_proto(self, out) -> None:
        """Append one rewind.buffer.v1.FieldSpec per field to a repeated field."""
        for name, spec in self.fields.items():
            out.add(name=name, dtype=TORCH_TO_WIRE[spec.dtype], shape=spec.shape)


def validate_episodes(
    tensors: Mapping[str, torch.Tensor],
    *,
    schema: EpisodeSchema | None,
    horizon: int,
    capacity: int,
    batch_dims: int = 1,
    where: str = "episode",
) -> int:
    """Check one episode (batch_dims=1) or a stack of them (batch_dims=2).

    Args:
        tensors: field name -> tensor with leading (L,) or (N, L) dims.
        schema: the buffer's schema, or None if this fixes it.
        horizon: episodes need at least horizon+1 steps.
        capacity: episodes may not be longer than the buffer.
        batch_dims: 1 for one episode, 2 for N episodes of equal length.
        where: prefix for error messages ("episode", "episodes[3]").

    Returns:
        The episode length L.

    Raises:
        InvalidArgument: with a message that names the offending field.
    """
    _check_fields(tensors, batch_dims, where)
    length = _check_lengths(tensors, horizon=horizon, capacity=capacity, batch_dims=batch_dims, where=where)
    if schema is not None:
        _check_schema(tensors, schema, batch_dims, where)
    return length


def _check_fields(tensors: Mapping[str, torch.Tensor], batch_dims: int, where: str) -> None:
    """The four fields, no others, with supported dtypes and the leading dims; one scalar per step where due."""
    if not tensors:
        raise InvalidArgument(f"{where}: no fields; expected {', '.join(FIELDS)}")
    missing = [k for k in FIELDS if k not in tensors]
    if missing:
        raise InvalidArgument(f"{where}: missing field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}")
    extra = sorted(k for k in tensors if k not in FIELDS)
    if extra:
        raise InvalidArgument(f"{where}: unexpected field(s) {', '.join(extra)}; expected only {', '.join(FIELDS)}")
    lead_name = "(N, L)" if batch_dims == 2 else "(L,)"
    for name in FIELDS:
        t = tensors[name]
        if t.dtype not in TORCH_TO_WIRE:
            raise InvalidArgument(f"{where}.{name}: dtype {dtype_name(t.dtype)} is not supported")
        if t.dim() < batch_dims:
            raise InvalidArgument(f"{where}.{name}: shape {list(t.shape)} lacks the leading {lead_name} dims")
        if name in SCALAR_FIELDS and t.dim() != batch_dims:
            raise InvalidArgument(
                f"{where}.{name}: shape {list(t.shape)}, expected {lead_name}: one scalar per step"
            )


def _check_lengths(tensors: Mapping[str, torch.Tensor], *, horizon: int, capacity: int, batch_dims: int,
                   where: str) -> int:
    """Every field has one entry per step; the episode fits the horizon and the buffer. Returns L."""
    lead = tuple(tensors["obs"].shape[:batch_dims])
    for name in FIELDS[1:]:
        other = tuple(tensors[name].shape[:batch_dims])
        if other != lead:
            raise InvalidArgument(
                f"{where}.{name}: leading dims {list(other)} do not match obs {list(lead)}; "
                "every field needs one entry per step"
            )
    if batch_dims == 2 and lead[0] == 0:
        raise InvalidArgument(f"{where}: zero episodes")
    length = lead[-1]
    if length == 0:
        raise InvalidArgument(f"{where}: zero-length episode")
    if length < horizon + 1:
        raise InvalidArgument(
            f"{where}.obs: {length} steps, but horizon {horizon} needs at least {horizon + 1}"
        )
    if length > capacity:
        raise InvalidArgument(f"{where}.obs: {length} steps exceed the buffer's capacity of {capacity} (buffer_size)")
    return length


def _check_schema(tensors: Mapping[str, torch.Tensor], schema: EpisodeSchema, batch_dims: int, where: str) -> None:
    """Each field's dtype and per-step shape are the ones the buffer's first episode fixed."""
    for name in FIELDS:
        t, spec = tensors[name], schema.fields[name]
        if t.dtype != spec.dtype:
            raise InvalidArgument(
                f"{where}.{name}: dtype {dtype_name(t.dtype)}, expected {dtype_name(spec.dtype)} "
                "(fixed by the buffer's first episode)"
            )
        step_shape = tuple(t.shape[batch_dims:])
        if step_shape != spec.shape:
            raise InvalidArgument(
                f"{where}.{name}: per-step shape {list(step_shape)}, expected {list(spec.shape)} "
                "(fixed by the buffer's first episode)"
            )
