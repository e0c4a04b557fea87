"""Conversions between buffer-service messages and tensors, used by both sides."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from rewind import codec
from rewind.buffer.v1 import buffer_pb2

BatchTuple = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def encode_episode(episode: Mapping[str, torch.Tensor], out: buffer_pb2.Episode | None = None) -> buffer_pb2.Episode:
    """Fill an Episode message from a mapping (or TensorDict) of field tensors."""
    msg = buffer_pb2.Episode() if out is None else out
    codec.encode_map({k: episode[k] for k in episode.keys()}, msg.fields)
    return msg


def decode_episode(msg: buffer_pb2.Episode, where: str = "episode") -> dict[str, torch.Tensor]:
    """Field name -> tensor viewing the message's bytes; errors name `where.field`."""
    return codec.decode_map(msg.fields, where)


def encode_batch(
    obs: torch.Tensor,
    action: torch.Tensor,
    reward: torch.Tensor,
    done: torch.Tensor,
    sequence_number: int,
    out: buffer_pb2.Batch,
) -> None:
    """Fill a Batch message in place."""
    codec.encode(obs, out.obs)
    codec.encode(action, out.action)
    codec.encode(reward, out.reward)
    codec.encode(done, out.done)
    out.sequence_number = sequence_number


def decode_batch(msg: buffer_pb2.Batch) -> BatchTuple:
    """(obs, action, reward, done) in TD-MPC2's layout."""
    return (
        codec.decode(msg.obs, "batch.obs"),
        codec.decode(msg.action, "batch.action"),
        codec.decode(msg.reward, "batch.reward"),
        codec.decode(msg.done, "batch.done"),
    )
