"""Ports, one rule for every service: a port left at its default becomes a free one when taken; a port
given explicitly fails to start when taken.

The processes (buffers started by hand, two trainings at once) are in tests/system/test_shared_host.py.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewind.channel import make_channel
from rewind.errors import Unavailable
from rewind_buffer.server import build
from rewind_buffer.settings import BufferServiceSettings
from rewind_checkpoint.settings import CheckpointSettings
from rewind_runtime.host import ServiceHost
from rewind_trainer.settings import TrainSettings
from tests.support.configs import SMALL
from tests.support.processes import free_port


@pytest.fixture
def taken():
    """Listening sockets on ports of this worker's block: ports another server holds."""
    sockets = []

    def take() -> int:
        sock = socket.socket()
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(1)
        sockets.append(sock)
        return sock.getsockname()[1]

    yield take
    for sock in sockets:
        sock.close()


def test_the_ports_that_fall_back_are_the_defaults_nobody_gave():
    assert BufferServiceSettings().fallback_ports() == {"http_port"}
    assert CheckpointSettings().fallback_ports() == {"http_port"}
    # The trainer's gRPC port too: clients find a trainer by its port file, not a fixed address.
    assert TrainSettings().fallback_ports() == {"port", "http_port"}
    # Given explicitly (by a flag, a variable or a file), even with the default's value: never.
    assert TrainSettings().fallback_ports({"port", "http_port"}) == set()
    assert BufferServiceSettings().fallback_ports({"http_port"}) == set()
    # Changed from the default, or 0 (already free) or -1 (none): nothing to fall back from.
    assert BufferServiceSettings(port=50061, http_port=50099).fallback_ports() == set()
    assert TrainSettings(port=0, http_port=-1).fallback_ports() == set()


def test_a_taken_default_http_port_becomes_a_free_one_logged_and_in_the_port_file(taken, tmp_path, caplog):
    port_file = tmp_path / "port"
    host, _ = build(SMALL.replace(port=0, http_port=taken(), port_file=str(port_file)))
    host.http.port_falls_back = True  # as from_settings sets it for http_port left at its default
    with caplog.at_level(logging.WARNING, logger="rewind_runtime.http"):
        host.start()
    try:
        assert host.http_port not in (None, 0, host.http.requested_port)
        assert Path(f"{port_file}.http").read_text() == str(host.http_port)
        assert f"http_port {host.http.requested_port} is taken; serving HTTP on port {host.http_port}" in caplog.text
    finally:
        host.stop(grace_s=0)


def test_an_explicit_http_port_that_is_taken_fails_naming_it(taken):
    port = taken()
    host, _ = build(SMALL.replace(port=0, http_port=port), explicit={"http_port"})
    with pytest.raises(Unavailable, match=rf"cannot listen on 127.0.0.1:{port} \(http_port\)"):
        host.start()


def test_from_settings_falls_back_only_for_ports_left_at_their_default(taken):
    defaults = BufferServiceSettings(port=0)
    assert ServiceHost.from_settings([], defaults).http.port_falls_back
    assert not ServiceHost.from_settings([], defaults, explicit={"http_port"}).http.port_falls_back
    assert not ServiceHost.from_settings([], defaults.replace(http_port=taken())).http.port_falls_back


def test_a_taken_grpc_and_health_port_fall_back_when_allowed(taken, tmp_path, caplog):
    grpc_port, health_port = taken(), taken()
    port_file = tmp_path / "port"
    host = ServiceHost([], port=grpc_port, health_port=health_port, port_file=str(port_file),
                       fallback_ports={"port", "health_port"})
    with caplog.at_level(logging.WARNING, logger="rewind_runtime.host"):
        host.start()
    try:
        assert host.port not in (0, grpc_port) and host.health_port not in (0, health_port, host.port)
        assert port_file.read_text() == str(host.port)
        assert Path(f"{port_file}.health").read_text() == str(host.health_port)
        assert not Path(f"{port_file}.http").exists()
        assert f"port {grpc_port} is taken; serving gRPC on port {host.port}" in caplog.text
        assert f"health_port {health_port} is taken; answering health checks on port {host.health_port}" \
            in caplog.text
        for port in (host.port, host.health_port):  # both answer, where the port file says
            with make_channel(f"127.0.0.1:{port}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        host.stop(grace_s=0)


@pytest.mark.parametrize("which", ["port", "health_port"])
def test_taken_grpc_and_health_ports_fail_when_given(taken, which):
    port = taken()
    host = ServiceHost([], port=port if which == "port" else 0, health_port=port if which == "health_port" else -1,
                       fallback_ports={"http_port"})
    with pytest.raises(Unavailable, match=rf"cannot listen on 127.0.0.1:{port} \({which}\)"):
        host.start()
    host.stop(grace_s=0)
