"""The `rewind` command line.

    rewind buffer serve --config buffer.toml --port 50051
    rewind buffer stats --address 127.0.0.1:50051
    rewind buffer demo                 # starts a service, exercises it, stops it
    rewind ckpt serve --store s3://my-bucket/rewind
    rewind ckpt ls tdmpc2/run-1
    rewind train --local-services
    rewind trainer status
    rewind health --address 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import grpc

from rewind import env_flags
from rewind.errors import RewindError, from_rpc_error

EXAMPLES = """examples:
  rewind buffer serve --port 50051 --min-history 1000
  rewind buffer serve --config my-buffer.toml --horizon 5
  rewind buffer stats --address 127.0.0.1:50051 --buffer test_buffer
  rewind buffer snapshot --buffer buffer --out buffer.snap
  rewind buffer restore --buffer buffer --in buffer.snap
  rewind buffer demo
  rewind ckpt serve --store file://./rewind-data
  rewind ckpt ls tdmpc2/run-1
  rewind ckpt latest tdmpc2/run-1
  rewind train --local-services                       # the whole trio on this machine
  rewind train --resume-from-checkpoint latest --steps 16000
  rewind trainer status --address 127.0.0.1:50053
  rewind health --address 127.0.0.1:50051
"""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or more, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewind",
        description="Rewind: preemption-proof TD-MPC2 training over gRPC.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    groups = parser.add_subparsers(dest="group", required=True, metavar="{buffer,ckpt,train,trainer,health}")

    buffer = groups.add_parser("buffer", help="the replay-buffer service", epilog=EXAMPLES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = buffer.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the buffer service until SIGTERM",
                                description="Run the buffer service. Flags override the TOML file.")
    serve.add_argument("--config", help="TOML file with [config] and [service] tables (default: packaged defaults)")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1; 0.0.0.0 in containers)")
    serve.add_argument("--port", type=_non_negative, help="TCP port (default 50051; 0 picks a free one)")
    serve.add_argument("--port-file", help="write the bound port to this file once SERVING")
    serve.add_argument("--buffer-size", type=_positive, help="capacity in transitions")
    serve.add_argument("--batch-size", type=_positive, help="sequences per batch")
    serve.add_argument("--min-history", type=_non_negative, help="transitions before sampling is allowed")
    serve.add_argument("--horizon", type=_positive, help="batches hold horizon+1 observations")
    serve.add_argument("--buffers", help="comma-separated buffer names (default buffer,test_buffer)")
    serve.add_argument("--storage-device", choices=["auto", "cpu", "cuda"], help="where storage lives")
    serve.add_argument("--seed", type=int, help="seed of the sampling generators")
    serve.add_argument("--max-message-mb", type=_positive, help="largest message, in MiB")
    serve.add_argument("--grace-s", type=float, help="seconds in-flight calls get on SIGTERM")
    serve.add_argument("--torch-threads", type=_non_negative, help="torch intra-op threads (0: torch's default)")
    serve.add_argument("--print-config", action="store_true", help="print the packaged default TOML and exit")
    env_flags.enable(serve)

    def client_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", default="127.0.0.1:50051", help="host:port of the buffer service")
        p.add_argument("--buffer", default="buffer", help="buffer name (default: buffer)")
        p.add_argument("--timeout", type=float, default=30.0, help="deadline per call, seconds")

    stats = commands.add_parser("stats", help="print a buffer's statistics")
    client_args(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")

    snap = commands.add_parser("snapshot", help="save a buffer's contents to a file")
    client_args(snap)
    snap.add_argument("--out", required=True, help="file to write")

    restore = commands.add_parser("restore", help="replace a buffer's contents from a snapshot file")
    client_args(restore)
    restore.add_argument("--in", dest="src", required=True, help="snapshot file to read")

    demo = commands.add_parser("demo", help="start a buffer service, exercise it with a short client, stop it")
    demo.add_argument("--address", help="use a running service instead of starting one")
    demo.add_argument("--episodes", type=_positive, default=40, help="episodes to add (default 40)")
    demo.add_argument("--steps", type=_positive, default=250, help="steps per episode (default 250)")
    demo.add_argument("--batches", type=_positive, default=300, help="batches to stream (default 300)")
    demo.add_argument("--out-dir", default="rewind-data", help="where the demo writes its snapshot")

    from rewind import checkpoint_cli

    checkpoint_cli.add_parser(groups)

    from rewind import train_cli

    train_cli.add_parsers(groups)

    health = groups.add_parser("health", help="probe a service's gRPC health (exit 0 when SERVING)")
    health.add_argument("--address", help="host:port of the service (default: 127.0.0.1:$REWIND_PORT, the port "
                                           "a container's service was given, else 127.0.0.1:50051)")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.from_environment = env_flags.apply(args)
    for name in env_flags.unknown(args):
        print(f"rewind: warning: {name} is not a setting of `{args.env_flags.prog}`; ignored", file=sys.stderr)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_level != "DEBUG":
        # boto3 announces where it found credentials at INFO; that is noise here.
        for name in ("botocore", "boto3", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # torchrl logs every storage allocation at INFO through its own handler,
    # and sets that level from RL_LOGGING_LEVEL when it is first imported.
    os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING" if args.log_level != "DEBUG" else "DEBUG")
    try:
        if args.group == "health":
            return _health(args)
        if args.group == "train":
            from rewind import train_cli

            return train_cli.run_train(args)
        if args.group == "trainer":
            from rewind import train_cli

            return train_cli.run_trainer(args)
        if args.group in ("ckpt", "checkpoint"):
            from rewind import checkpoint_cli

            return checkpoint_cli.run(args)
        from rewind import buffer_cli

        return buffer_cli.run(args)
    except RewindError as exc:
        print(f"rewind: error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(f"rewind: error: {from_rpc_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _health(args: argparse.Namespace) -> int:
    from rewind.channel import make_channel
    from rewind.health import check

    # Docker's HEALTHCHECK cannot expand variables in its exec form, so the
    # default follows the REWIND_PORT the service itself was started with.
    address = args.address or f"127.0.0.1:{os.environ.get('REWIND_PORT') or 50051}"
    with make_channel(address) as channel:
        try:
            status = check(channel, args.service, timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"rewind: error: {address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
