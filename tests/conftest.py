from __future__ import annotations

import pytest

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2_grpc
from rewind.channel import make_channel
from rewind_buffer import BufferSettings, ServiceConfig
from rewind_buffer.server import serve

SMALL = BufferSettings(buffer_size=2000, batch_size=8, min_history=100, horizon=3)


@pytest.fixture
def service():
    """A real buffer service on 127.0.0.1 (in this process), small settings."""
    host = serve(ServiceConfig(settings=SMALL, port=0, max_message_mb=4))
    yield host
    host.stop(grace_s=0.5)


@pytest.fixture
def client(service):
    with BufferClient(service.address, "buffer", timeout=10.0, max_message_bytes=4 * 2**20) as c:
        yield c


@pytest.fixture
def stub(service):
    channel = make_channel(service.address, max_message_bytes=64 * 2**20)
    yield buffer_pb2_grpc.BufferServiceStub(channel)
    channel.close()
