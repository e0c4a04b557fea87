"""Rewind: preemption-proof TD-MPC2 training over gRPC.

The SDK: `BufferClient` speaks to the buffer service with TD-MPC2's buffer
API; `rewind.errors` holds the exceptions every call may raise.
"""

from rewind import errors
from rewind.buffer_client import BatchStream, BufferClient

__version__ = "0.1.0"

__all__ = ["BatchStream", "BufferClient", "__version__", "errors"]
