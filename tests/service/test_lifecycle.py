"""Health and start-up of the service as a host in this process; the SDK against no service.

Drain on SIGTERM and stalls of the service as a process are in tests/system/test_lifecycle_process.py.
"""

from __future__ import annotations

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewind import BufferClient
from rewind.channel import make_channel
from rewind.errors import Unavailable
from rewind_buffer.server import SERVICE_NAME, build
from tests.support.configs import SMALL

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(address: str, service: str = "") -> int:
    with make_channel(address) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_health_is_not_serving_until_startup_work_is_done():
    host, _ = build(SMALL.replace(port=0))
    host.start(serving=False)
    try:
        assert health_status(host.address) == NOT_SERVING
        assert health_status(host.address, SERVICE_NAME) == NOT_SERVING
        host.set_serving()
        assert health_status(host.address) == SERVING
        assert health_status(host.address, SERVICE_NAME) == SERVING
    finally:
        host.stop(grace_s=0)


def test_unreachable_service_is_unavailable_after_retries():
    client = BufferClient("127.0.0.1:1", timeout=2.0)
    with pytest.raises(Unavailable):
        client.stats()
    client.close()


def test_port_in_use_is_a_clear_error(service):
    host, _ = build(SMALL.replace(port=service.port, http_port=0))
    with pytest.raises(Unavailable, match=f"cannot listen on 127.0.0.1:{service.port}"):
        host.start()
