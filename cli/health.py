"""`rewind health`: probe any Rewind service's gRPC health (the image's HEALTHCHECK)."""

from __future__ import annotations

import argparse
import os
import sys

from rewind import addresses


def add_parser(groups: argparse._SubParsersAction) -> None:
    health = groups.add_parser("health", help="probe a service's gRPC health (exit 0 when SERVING)")
    health.add_argument("--address", help="host:port of the service (default: 127.0.0.1:$REWIND_PORT, the port "
                                           "a container's service was given, else 127.0.0.1:50051)")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    health.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from rewind.channel import make_channel
    from rewind.health import check

    # Docker's HEALTHCHECK cannot expand variables in its exec form, so the
    # default follows the REWIND_PORT the service itself was started with.
    address = args.address or f"127.0.0.1:{os.environ.get('REWIND_PORT') or addresses.BUFFER_PORT}"
    with make_channel(address) as channel:
        try:
            status = check(channel, args.service, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"rewind: error: {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(status)
    return 0 if status == "SERVING" else 1
