"""Rewind: preemption-proof TD-MPC2 training over gRPC.

The SDK: `BufferClient` speaks to the buffer service with TD-MPC2's buffer
API, and `ShardedBufferClient` to several that hold one buffer between
them; `CheckpointClient` saves, finds and downloads checkpoints through the
checkpoint service; `TrainerClient` talks to a running trainer; `rewind.errors`
holds the exceptions every call may raise; `train()` runs or resumes training;
`list_checkpoints()` lists a store's checkpoints with no service running.

The SDK holds the clients, the wire format and the errors, and imports no
service. Its names load on first use (PEP 562), so `import rewind` needs
neither torch nor grpc. Functions that a service provides, such as `train`
(the trainer), are found through the `rewind.api` entry-point group that the
service's package declares (`list_checkpoints`, the checkpoint service's).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Name -> the SDK module that defines it.
_EXPORTS = {
    "BatchStream": "rewind.buffer_client",
    "BufferClient": "rewind.buffer_client",
    "ShardedBufferClient": "rewind.sharded_buffer_client",
    "CheckpointClient": "rewind.checkpoint_client",
    "buffer_source": "rewind.checkpoint_client",
    "TrainerClient": "rewind.trainer_client",
    "errors": "rewind.errors",
}
API_GROUP = "rewind.api"

__all__ = ["BatchStream", "BufferClient", "CheckpointClient", "ShardedBufferClient", "TrainerClient", "__version__",
           "buffer_source", "errors", "list_checkpoints", "train"]


def _provided(name: str) -> Any:
    """A function that an installed Rewind package provides under `name` in the `rewind.api` entry points."""
    from importlib import metadata

    for entry in metadata.entry_points(group=API_GROUP, name=name):
        return entry.load()
    raise AttributeError(f"module 'rewind' has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("rewind.errors")
    module = _EXPORTS.get(name)
    value = getattr(importlib.import_module(module), name) if module else _provided(name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
