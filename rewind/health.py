"""Health probing of any Rewind service (grpc.health.v1)."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewind.channel import make_channel
from rewind.errors import Unavailable


def check(channel: grpc.Channel, service: str = "", timeout: float = 2.0) -> str:
    """The serving status name ("SERVING", "NOT_SERVING", ...) of `service`."""
    stub = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def answers(address: str, timeout: float = 2.0) -> bool:
    """Whether any service answers its health check at `address` (a refused connection fails at once)."""
    channel = make_channel(address)
    try:
        check(channel, timeout=timeout)
        return True
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def wait_until_serving(channel: grpc.Channel, service: str = "", timeout: float = 30.0, target: str = "") -> None:
    """Poll the health service until it reports SERVING.

    Raises:
        Unavailable: not SERVING within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            last = check(channel, service, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            if last == "SERVING":
                return
        except grpc.RpcError as exc:
            last = exc.code().name
        # Polling interval, not synchronisation: health has no push for unary Check.
        time.sleep(0.1)
    where = f" at {target}" if target else ""
    raise Unavailable(f"service{where} not SERVING after {timeout:.0f}s (last status: {last}); is it running?")
