"""AuthThrottle's counting, window and lockout, on a clock the test moves."""

from __future__ import annotations

import pytest

from rewind.errors import ResourceExhausted
from rewind_runtime.auth_throttle import AuthThrottle, peer_host


def test_failures_within_the_window_shut_a_peer_out_for_the_lockout_only():
    now = [0.0]
    throttle = AuthThrottle(limit=3, window_s=60, lockout_s=30, clock=lambda: now[0])
    assert [throttle.failed("10.0.0.7") for _ in range(2)] == [False, False]
    now[0] = 61.0  # those two left the window
    assert [throttle.failed("10.0.0.7") for _ in range(3)] == [False, False, True]
    with pytest.raises(ResourceExhausted, match=r"from 10.0.0.7 \(3 within 60 s\); its calls are refused for "
                                                r"another 30 s") as refused:
        throttle.check("10.0.0.7")
    assert refused.value.reason == "AUTH_THROTTLED"
    throttle.check("10.0.0.8")  # another peer is not affected
    now[0] = 91.5
    throttle.check("10.0.0.7")  # the lockout is over, and its count starts again
    assert throttle.failed("10.0.0.7") is False
    assert AuthThrottle(limit=0).failed("10.0.0.7") is False  # 0: never


def test_a_grpc_peer_is_its_address_as_http_sees_it():
    assert peer_host("ipv4:10.0.0.7:52344") == "10.0.0.7"
    assert peer_host("ipv6:[::1]:52344") == "::1"
    assert peer_host("unix:/tmp/sock") == "unix:/tmp/sock"
