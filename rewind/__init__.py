"""Rewind: preemption-proof TD-MPC2 training over gRPC.

The SDK: `BufferClient` speaks to the buffer service with TD-MPC2's buffer
API; `CheckpointClient` saves, finds and downloads checkpoints through the
checkpoint service; `TrainerClient` talks to a running trainer; `train()`
runs or resumes training; `rewind.errors` holds the exceptions every call may
raise.
"""

from rewind import errors
from rewind.buffer_client import BatchStream, BufferClient
from rewind.checkpoint_client import CheckpointClient, buffer_source
from rewind.trainer_client import TrainerClient
from rewind.training import train

__version__ = "0.1.0"

__all__ = ["BatchStream", "BufferClient", "CheckpointClient", "TrainerClient", "__version__", "buffer_source",
           "errors", "train"]
