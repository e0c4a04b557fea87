"""Tensor wire codec: torch.Tensor <-> rewind.tensor.v1.Tensor.

Tensors travel as raw little-endian bytes plus dtype and shape. Decoding views
the message's bytes in place (no parse, no copy); the returned tensor shares
memory with the message, so copy it before writing into it.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Mapping

import torch

from rewind.errors import InvalidArgument
from rewind.tensor.v1 import tensor_pb2

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("rewind's tensor codec assumes a little-endian host")

# torch warns (once) that a view of an immutable `bytes` is not writable; the
# zero-copy view is the point, and the module docstring states the contract.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)

TORCH_TO_WIRE: dict[torch.dtype, int] = {
    torch.float32: tensor_pb2.DTYPE_FLOAT32,
    torch.float64: tensor_pb2.DTYPE_FLOAT64,
    torch.float16: tensor_pb2.DTYPE_FLOAT16,
    torch.bfloat16: tensor_pb2.DTYPE_BFLOAT16,
    torch.uint8: tensor_pb2.DTYPE_UINT8,
    torch.int8: tensor_pb2.DTYPE_INT8,
    torch.int16: tensor_pb2.DTYPE_INT16,
    torch.int32: tensor_pb2.DTYPE_INT32,
    torch.int64: tensor_pb2.DTYPE_INT64,
    torch.bool: tensor_pb2.DTYPE_BOOL,
}
WIRE_TO_TORCH: dict[int, torch.dtype] = {v: k for k, v in TORCH_TO_WIRE.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Short name of a torch dtype, as printed in error messages ("float32")."""
    return str(dtype).removeprefix("torch.")


def encode(tensor: torch.Tensor, out: tensor_pb2.Tensor | None = None) -> tensor_pb2.Tensor:
    """Encode a tensor (any device) into a wire Tensor.

    Args:
        tensor: the tensor; moved to CPU and made contiguous if needed.
        out: an existing message to fill in place (e.g. a field of a request).

    Returns:
        The filled message.

    Raises:
        InvalidArgument: the dtype has no wire representation.
    """
    wire = TORCH_TO_WIRE.get(tensor.dtype)
    if wire is None:
        raise InvalidArgument(f"tensor dtype {dtype_name(tensor.dtype)} is not supported on the wire")
    msg = tensor_pb2.Tensor() if out is None else out
    msg.dtype = wire
    msg.shape[:] = tensor.shape
    cpu = tensor.detach().to("cpu").contiguous()
    # view(uint8) handles dtypes numpy lacks (bfloat16); tobytes is the one copy.
    msg.data = cpu.reshape(-1).view(torch.uint8).numpy().tobytes()
    return msg


def decode(msg: tensor_pb2.Tensor, field: str = "tensor") -> torch.Tensor:
    """Decode a wire Tensor into a CPU tensor that views the message's bytes.

    Args:
        msg: the wire tensor.
        field: the field's name, used in error messages.

    Returns:
        A tensor with the message's dtype and shape (read-only by contract).

    Raises:
        InvalidArgument: unknown dtype, negative dimension, or a byte count that
            does not match the shape; the message names `field`.
    """
    dtype = WIRE_TO_TORCH.get(msg.dtype)
    if dtype is None:
        raise InvalidArgument(f"{field}.dtype: unknown or unspecified dtype {msg.dtype}")
    return view_bytes(msg.data, dtype, tuple(msg.shape), field)


def view_bytes(data: bytes | bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...],
               field: str = "tensor") -> torch.Tensor:
    """View raw little-endian bytes as a tensor of `dtype` and `shape`, sharing memory.

    Raises:
        InvalidArgument: a negative dimension, or a byte count that does not match.
    """
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{field}.shape: negative dimension in {list(shape)}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"{field}.data: {len(data)} bytes, but shape {list(shape)} of "
            f"{dtype_name(dtype)} needs {expected}"
        )
    if expected == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(data, dtype=dtype).view(shape)


def encode_map(tensors: Mapping[str, torch.Tensor], out) -> None:
    """Encode a name -> tensor mapping into a protobuf map<string, Tensor> field."""
    for name, tensor in tensors.items():
        encode(tensor, out[name])


def decode_map(fields, prefix: str) -> dict[str, torch.Tensor]:
    """Decode a protobuf map<string, Tensor> field; errors name `prefix.key`."""
    return {name: decode(msg, f"{prefix}.{name}") for name, msg in fields.items()}
