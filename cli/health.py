"""`rewind health`: probe any Rewind service's gRPC health (the image's HEALTHCHECK)."""

from __future__ import annotations

import argparse
import os
import sys

from rewind import addresses


def add_parser(groups: argparse._SubParsersAction) -> None:
    health = groups.add_parser("health", help="probe a service's gRPC health (exit 0 when SERVING)")
    health.add_argument("--address", help="host:port of the service (default: 127.0.0.1:$REWIND_HEALTH_PORT in "
                                           "plaintext when a container's service has a health port, else "
                                           "127.0.0.1:$REWIND_PORT, else 127.0.0.1:50051)")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    health.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from rewind.channel import make_channel
    from rewind.health import check
    from rewind.security import ClientSecurity

    # Docker's HEALTHCHECK cannot expand variables in its exec form, so the
    # default follows the ports the service itself was started with.
    health_port = os.environ.get("REWIND_HEALTH_PORT", "-1")
    if args.address is None and health_port.lstrip("-").isdigit() and int(health_port) >= 0:
        address, security = f"127.0.0.1:{health_port}", ClientSecurity()  # the plaintext health-only port
    else:
        address = args.address or f"127.0.0.1:{os.environ.get('REWIND_PORT') or addresses.BUFFER_PORT}"
        security = None  # REWIND_TLS_* as every client
    with make_channel(address, security=security) as channel:
        try:
            status = check(channel, args.service, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"rewind: error: {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(status)
    return 0 if status == "SERVING" else 1
