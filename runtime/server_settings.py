"""The settings every Rewind server has: where it listens and its limits."""

from __future__ import annotations

from dataclasses import dataclass

from rewind_runtime.settings import Settings, setting


@dataclass(frozen=True)
class ServerSettings(Settings):
    """Listening address, message limit, workers and drain time of a gRPC server.

    A service's settings class derives from this one and sets its own port.
    """

    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0 in containers)")
    port: int = setting(0, "TCP port (0 picks a free one)", minimum=0, maximum=65535)
    port_file: str = setting("", "write the bound port to this file once SERVING")
    max_message_mb: int = setting(64, "largest request or response, both ways, in MiB", minimum=1, maximum=2047)
    grace_s: float = setting(10.0, "seconds in-flight calls get on SIGTERM", minimum=0)
    workers: int = setting(16, "gRPC worker threads", minimum=1)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024
