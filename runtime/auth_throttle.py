"""AuthThrottle: a peer that keeps failing to authenticate is shut out for a while.

Tokens are long and compared in constant time, but nothing stopped a client
from trying one token after another as fast as the service answers. Once a
peer (its address, without the port: every connection of a host counts) has
failed `limit` authentications within `window_s` seconds, every call from it
is refused for `lockout_s` seconds, whatever token it carries: a valid token
and a guessed one get the same answer (RESOURCE_EXHAUSTED over gRPC, 429 over
HTTP), so the lockout is no oracle. Failures are forgotten as they leave the
window; the peers remembered are bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from rewind.errors import ResourceExhausted

log = logging.getLogger(__name__)

MAX_PEERS = 10_000  # peers remembered at once; the oldest are forgotten first


class AuthThrottle:
    """Counts failed authentications per peer and shuts out the peers over the limit.

    Args:
        limit: failures within `window_s` that shut a peer out (0: never).
        window_s: how far back failures count.
        lockout_s: how long a peer stays shut out.
        clock: monotonic seconds (tests).
    """

    def __init__(self, limit: int = 10, window_s: float = 60.0, lockout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window_s, self.lockout_s, self.clock = limit, window_s, lockout_s, clock
        self._failures: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, peer: str) -> None:
        """Refuse a call from a peer that is shut out.

        Raises:
            ResourceExhausted: naming the peer and how long it stays shut out.
        """
        with self._lock:
            until = self._until.get(peer)
            if until is None:
                return
            left = until - self.clock()
            if left <= 0:
                del self._until[peer]
                return
        raise ResourceExhausted(
            f"authorization: too many failed authentications from {peer} ({self.limit} within "
            f"{self.window_s:.0f} s); its calls are refused for another {left:.0f} s. Check the token file",
            reason="AUTH_THROTTLED")

    def failed(self, peer: str) -> bool:
        """Count one failed authentication of `peer`; returns whether it is now shut out."""
        if not self.limit:
            return False
        now = self.clock()
        with self._lock:
            failures = self._failures.setdefault(peer, deque())
            failures.append(now)
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(self._failures) > MAX_PEERS:
                self._failures.pop(next(iter(self._failures)))
            if len(failures) < self.limit:
                return False
            failures.clear()
            self._until[peer] = now + self.lockout_s
            if len(self._until) > MAX_PEERS:
                self._until.pop(next(iter(self._until)))
        log.warning("shutting out %s for %.0f s: %d failed authentications within %.0f s", peer, self.lockout_s,
                    self.limit, self.window_s)
        return True


def peer_host(peer: str) -> str:
    """The address a gRPC peer ("ipv4:10.0.0.7:52344", "ipv6:[::1]:52344") calls from, without its port: as
    an HTTP request's client address reads ("10.0.0.7", "::1"), so that both count as one peer."""
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6") and address:
        return address.rsplit(":", 1)[0].strip("[]")
    return peer
