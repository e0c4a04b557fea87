"""The settings every Rewind server has: where it listens and its limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar

from rewind.errors import InvalidArgument
from rewind_runtime.settings import Settings, setting


@dataclass(frozen=True)
class ServerSettings(Settings):
    """Listening address, message limit, workers and drain time of a gRPC server.

    A service's settings class derives from this one and sets its own port.

    Ports, one rule for every service: an HTTP or health port left at its default becomes a free port
    when the default is taken (logged, and written beside the port file), so that two services of a kind
    run on one host with only `port` changed. So does the gRPC port of a class whose clients find it by
    its port file rather than by a fixed address (`GRPC_PORT_FALLS_BACK`, the trainer's). A port given
    explicitly, by a flag, a variable or a config file, still fails to start when taken.
    """

    GRPC_PORT_FALLS_BACK: ClassVar[bool] = False

    host: str = setting("127.0.0.1", "interface to listen on (0.0.0.0 in containers)")
    port: int = setting(0, "TCP port (0 picks a free one)", minimum=0, maximum=65535)
    port_file: str = setting("", "write the bound port to this file once SERVING")
    health_port: int = setting(-1, "also answer health checks, and nothing else, in plaintext on this port "
                                   "(Kubernetes' gRPC probes cannot speak TLS; -1: none)", minimum=-1, maximum=65535)
    http_port: int = setting(-1, "HTTP port for /metrics (and the checkpoint service's history pages and API); "
                                 "-1: none, 0: a free one, and a free one too when port is 0 and this is left "
                                 "at its default", minimum=-1, maximum=65535)
    max_message_mb: int = setting(64, "largest request or response, both ways, in MiB", minimum=1, maximum=2047)
    grace_s: float = setting(10.0, "seconds in-flight calls get on SIGTERM", minimum=0)
    serve_after_sigterm_s: float = setting(0.0, "on SIGTERM, go on serving new calls this many seconds (health says "
                                                "NOT_SERVING) before draining, so that a learner stopped at the same "
                                                "moment (a Kueue suspend) still takes its final checkpoint from this "
                                                "service; a second signal cuts it short", minimum=0)
    preempt_exit_code: int = setting(0, "exit code after stopping on SIGTERM: in a Kubernetes Job (a JobSet's shard) "
                                        "a non-zero one (143) that its podFailurePolicy ignores, so that a stopped "
                                        "pod is replaced rather than counted complete", minimum=0, maximum=255)
    workers: int = setting(16, "gRPC worker threads", minimum=1)
    max_streams: int = setting(0, "streams open at once; more get RESOURCE_EXHAUSTED (0: half the workers, so "
                                  "health and unary calls keep threads)", minimum=0)
    # Who may call (see rewind_runtime.auth); empty files mean no authentication.
    read_tokens_file: str = setting("", "file of tokens that may read (stats, list, lookup, download, status), "
                                        "one per line: TOKEN, or NAME:TOKEN to name it in the logs")
    write_tokens_file: str = setting("", "file of tokens that may also write (add, sample, save, delete, restore, "
                                         "stop, ...), one per line")
    collector_tokens_file: str = setting("", "file of tokens that may only do what a collector does (add episodes, "
                                             "get the learner's weights, look up and download checkpoints), one "
                                             "per line")
    auth_failure_limit: int = setting(10, "failed authentications from one peer within a minute after which its "
                                          "calls are refused for auth_lockout_s (0: never)", minimum=0)
    auth_lockout_s: float = setting(30.0, "seconds a peer that failed auth_failure_limit authentications is shut "
                                          "out, whatever token it sends", above=0)
    allow_unauthenticated: bool = setting(False, "serve with no tokens on an interface other than loopback "
                                                 "(only on a network you trust)")
    tls_cert_file: str = setting("", "TLS certificate (PEM, e.g. a Secret's tls.crt); with tls_key_file turns TLS on")
    tls_key_file: str = setting("", "TLS private key (PEM, tls.key)")
    tls_client_ca_file: str = setting("", "CA (ca.crt) that client certificates must chain to; requires them (mTLS)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_streams >= self.workers:
            raise InvalidArgument(f"max_streams: {self.max_streams} must be below workers ({self.workers}), or "
                                  "streams could take every thread and starve health checks")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise InvalidArgument("tls_cert_file, tls_key_file: give both or neither")
        if self.port > 0 and self.http_port == self.port and self.http_port != self._default("http_port"):
            raise InvalidArgument(f"http_port: {self.http_port} is the gRPC port (port) too; give another, or -1 "
                                  "to turn HTTP off")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise InvalidArgument("tls_client_ca_file: client certificates need TLS; give tls_cert_file and "
                                  "tls_key_file too")

    def fallback_ports(self, explicit: Collection[str] = ()) -> frozenset[str]:
        """The ports that become a free one when taken: those at their default, not in `explicit` (the
        settings given by a flag, a variable or a file), and not already 0 or -1."""
        names = ("http_port", "health_port", *(("port",) if self.GRPC_PORT_FALLS_BACK else ()))
        return frozenset(name for name in names
                         if name not in explicit and getattr(self, name) == self._default(name)
                         and getattr(self, name) > 0)

    def _default(self, name: str) -> object:
        return next(f.default for f in dataclasses.fields(self) if f.name == name)

    @property
    def max_message_bytes(self) -> int:
        return self.max_message_mb * 1024 * 1024

    @property
    def http_port_to_bind(self) -> int:
        """The HTTP port to listen on: http_port, except a free one (0) when http_port is left at its
        class default and port is 0 or that same default, so that services on free ports (tests,
        LocalService) never collide on a fixed HTTP port, and a gRPC port given as the HTTP default
        does not take the HTTP port's place.
        """
        default = self._default("http_port")
        if self.http_port == default and default > 0 and self.port in (0, default):
            return 0
        return self.http_port
