"""ServiceClient: what every Rewind client shares (channel, deadlines, error
mapping, health wait, closing)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc

from rewind.channel import DEFAULT_MAX_MESSAGE_BYTES, make_channel
from rewind.errors import RewindError, from_rpc_error_at
from rewind.security import ClientSecurity


class ServiceClient:
    """Base of BufferClient and CheckpointClient.

    Args:
        address: "host:port" of the service.
        timeout: deadline in seconds for each unary call.
        max_message_bytes: message limit; keep it equal to the service's.
        on_close: called once by close(), after the channel closes (an
            in-process service's `serve_in_process` stops the service with it).
        security: token and TLS (default: from REWIND_TOKEN_FILE and REWIND_TLS_*).
    """

    SERVICE = "service"  # how errors name it, e.g. "buffer service"

    def __init__(self, address: str, *, timeout: float, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 on_close: Callable[[], None] | None = None, security: ClientSecurity | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.security = ClientSecurity.from_env() if security is None else security
        self._channel = make_channel(address, max_message_bytes=max_message_bytes, security=self.security)
        self._on_close = on_close

    def _error(self, exc: grpc.RpcError) -> RewindError:
        return from_rpc_error_at(exc, self.SERVICE, self.address)

    def _call(self, method, request, timeout: float | None = None):
        """A unary (or client-streaming) call; failures raise RewindErrors."""
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _stream(self, method, request, timeout: float) -> Iterator:
        """A server-streaming call's responses; cancelled if the caller stops early."""
        call = method(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        finally:
            call.cancel()

    def wait_until_serving(self, timeout: float = 30.0) -> None:
        """Block until the service's health check reports SERVING."""
        from rewind.health import wait_until_serving

        wait_until_serving(self._channel, timeout=timeout, target=self.address)

    def close(self) -> None:
        """Close the channel (and stop an in-process service)."""
        self._channel.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
