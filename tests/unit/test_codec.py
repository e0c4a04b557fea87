"""The tensor wire codec: exact round trips, zero-copy decode, clear errors."""

from __future__ import annotations

import ctypes

import pytest
import torch

from rewind import codec
from rewind.errors import InvalidArgument
from rewind.tensor.v1 import tensor_pb2


@pytest.mark.parametrize("dtype", list(codec.TORCH_TO_WIRE))
def test_round_trip_every_dtype(dtype):
    source = (torch.arange(24).reshape(2, 3, 4) % 7).to(dtype)
    decoded = codec.decode(codec.encode(source))
    assert decoded.dtype == dtype and decoded.shape == source.shape
    assert torch.equal(decoded, source)


def test_non_contiguous_and_scalar_and_empty():
    t = torch.arange(12.0).reshape(3, 4).t()
    assert torch.equal(codec.decode(codec.encode(t)), t)
    assert torch.equal(codec.decode(codec.encode(torch.tensor(3.5))), torch.tensor(3.5))
    assert codec.decode(codec.encode(torch.zeros(0, 5))).shape == (0, 5)


def test_decode_views_the_bytes_without_copying():
    payload = codec.encode(torch.randn(256, 64)).data
    tensor = codec.view_bytes(payload, torch.float32, (256, 64))
    address = ctypes.cast(ctypes.c_char_p(payload), ctypes.c_void_p).value
    assert tensor.data_ptr() == address  # the tensor is the message's bytes, not a copy
    writable = bytearray(payload)
    view = codec.view_bytes(writable, torch.float32, (256, 64))
    writable[:4] = b"\0\0\0\0"
    assert view[0, 0].item() == 0.0  # shares memory both ways


@pytest.mark.parametrize(
    "msg,needle",
    [
        (tensor_pb2.Tensor(dtype=0, shape=[2], data=b"\0" * 8), "obs.dtype"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[-1], data=b""), "obs.shape"),
        (tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_FLOAT32, shape=[3], data=b"\0" * 8), "obs.data: 8 bytes"),
    ],
)
def test_bad_tensors_name_the_field(msg, needle):
    with pytest.raises(InvalidArgument, match=needle):
        codec.decode(msg, "obs")


def test_unsupported_dtype_is_refused():
    with pytest.raises(InvalidArgument, match="complex64"):
        codec.encode(torch.zeros(2, dtype=torch.complex64))
