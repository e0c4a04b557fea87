"""Token files, and a check that every RPC of a service is guarded with the right scope."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from rewind.channel import make_channel
from rewind.security import ClientSecurity

READ_TOKEN, WRITE_TOKEN = "read-0123456789abcdef", "write-fedcba9876543210"
COLLECTOR_TOKEN, COLLECTOR_NAME = "collector-00aa11bb22cc33dd", "collector-7"


@dataclass(frozen=True)
class Tokens:
    read_file: str
    write_file: str
    read: ClientSecurity
    write: ClientSecurity
    collector_file: str = ""
    collector: ClientSecurity | None = None


def make_tokens(folder: Path) -> Tokens:
    """A read, a write and a collector token, each in its own file, as Kubernetes Secrets would mount them.

    The collector's line is named (NAME:TOKEN), and its client reads that very file: a token file is both a
    server's list and a client's token, and a client sends only the token part.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, token in (("read", READ_TOKEN), ("write", WRITE_TOKEN)):
        (folder / f"{name}.tokens").write_text(f"# {name} tokens, one per line\n{token}\n")
        (folder / f"{name}.token").write_text(token + "\n")  # what a client mounts
        files[name] = folder / f"{name}.token"
    collector = folder / "collector.tokens"
    collector.write_text(f"{COLLECTOR_NAME}:{COLLECTOR_TOKEN}\n")
    return Tokens(str(folder / "read.tokens"), str(folder / "write.tokens"),
                  ClientSecurity(token_file=str(files["read"])), ClientSecurity(token_file=str(files["write"])),
                  str(collector), ClientSecurity(token_file=str(collector)))


def raw_call(address: str, method: str, kind: tuple[bool, bool], metadata: tuple = (),
             security: ClientSecurity | None = None) -> grpc.StatusCode:
    """Call `method` with an empty request (any kind of streaming) and return the status code it ends with."""
    request_streams, response_streams = kind
    channel = make_channel(address, security=security or ClientSecurity())
    identity = {"request_serializer": None, "response_deserializer": None}
    try:
        if request_streams and response_streams:
            call = channel.stream_stream(method, **identity)(iter([b""]), metadata=metadata, timeout=10)
        elif request_streams:
            call = channel.stream_unary(method, **identity).with_call(iter([b""]), metadata=metadata, timeout=10)[1]
        elif response_streams:
            call = channel.unary_stream(method, **identity)(b"", metadata=metadata, timeout=10)
        else:
            call = channel.unary_unary(method, **identity).with_call(b"", metadata=metadata, timeout=10)[1]
        if response_streams:
            for _ in call:
                break
            call.cancel()
        return call.code() if not response_streams else grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()


def methods_of(service_descriptor) -> list[tuple[str, tuple[bool, bool]]]:
    """Every method of a service: its full name and (client streams, server streams)."""
    return [(f"/{service_descriptor.full_name}/{m.name}", (m.client_streaming, m.server_streaming))
            for m in service_descriptor.methods]


def assert_guarded(address: str, service_descriptor, read_methods: set[str], fingerprint: Callable[[], object],
                   tls: ClientSecurity | None = None,
                   collector_methods: set[str] | None = None) -> dict[str, grpc.StatusCode]:
    """No token and a bad token get UNAUTHENTICATED, a read token on a write method PERMISSION_DENIED,
    and none of these changes `fingerprint()`. Returns what the read token got on each read method.

    `tls`: the TLS settings (no token) to reach a TLS service with. `collector_methods`: given, a
    collector token gets PERMISSION_DENIED on every other method, and gets in on these."""
    before = fingerprint()
    read_answers = {}
    bearer = {"none": (), "bad": (("authorization", "Bearer not-a-token"),),
              "malformed": (("authorization", WRITE_TOKEN),),  # no "Bearer "
              "read": (("authorization", f"Bearer {READ_TOKEN}"),),
              "collector": (("authorization", f"Bearer {COLLECTOR_TOKEN}"),)}
    denied = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    for method, kind in methods_of(service_descriptor):
        name = method.rsplit("/", 1)[1]
        for case in ("none", "bad", "malformed"):
            assert raw_call(address, method, kind, bearer[case], tls) == grpc.StatusCode.UNAUTHENTICATED, (method,
                                                                                                          case)
        code = raw_call(address, method, kind, bearer["read"], tls)
        if name in read_methods:
            assert code not in denied, method
            read_answers[name] = code
        else:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code)
        if collector_methods is not None:
            code = raw_call(address, method, kind, bearer["collector"], tls)
            if name in collector_methods:
                assert code not in denied, ("collector", method, code)
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, ("collector", method, code)
        assert fingerprint() == before, f"{method} changed state"
    return read_answers
