"""The `rewind` command line: one module per command group, dispatched by `set_defaults(func=...)`.

    rewind buffer serve --config buffer.toml --port 50051
    rewind ckpt ls tdmpc2/run-1
    rewind train --local-services
    rewind trainer status
    rewind health --address 127.0.0.1:50051

Each group module registers its parser with `add_parser(groups)` and imports
what its commands need only when they run, so `rewind health` loads neither
torch nor a service.
"""

from __future__ import annotations

import argparse
import faulthandler
import importlib
import io
import logging
import os
import signal
import sys
from collections.abc import Sequence

from rewind.errors import RewindError
from rewind_cli import security
from rewind_runtime.local import stop_with_parent_from_env

# The command groups, one module each, in the order --help lists them.
GROUPS = ("buffer", "checkpoint", "train", "collect", "sweep", "trainer", "health", "secrets")

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
  rewind collect --buffer-addresses 10.0.0.1:50051,10.0.0.2:50051 --learner-address 10.0.0.9:50053
  rewind sweep --seeds 1,2 -- --local-services --model-size tiny   # two runs, each on its share of the CPUs
  rewind trainer status --address 127.0.0.1:50053
  rewind health --address 127.0.0.1:50051
  rewind secrets init --dir ./rewind-secrets          # tokens, a CA and a certificate for a deployment
  rewind ckpt ls --token-file read.token --tls-ca-file ca.crt --address ckpt.example:50052
"""


def build_parser(groups: Sequence[str] = GROUPS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rewind", description="Rewind: preemption-proof TD-MPC2 training over gRPC.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    security.add_arguments(parser)
    commands = parser.add_subparsers(dest="group", required=True,
                                     metavar="{buffer,ckpt,train,collect,sweep,trainer,health,secrets}")
    for name in groups:
        importlib.import_module(f"rewind_cli.{name}").add_parser(commands)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":
        # boto3 announces where it found credentials at INFO; that is noise here.
        for name in ("botocore", "boto3", "urllib3"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # torchrl logs every storage allocation at INFO through its own handler,
    # and sets that level from RL_LOGGING_LEVEL when it is first imported.
    os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING" if level != "DEBUG" else "DEBUG")


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's stack to stderr: what a process that seems stuck is doing."""
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass  # stderr is no file (main() called in-process, its output captured): nowhere to print them


def main(argv: Sequence[str] | None = None) -> int:
    stop_with_parent_from_env()  # a service LocalService started stops when its parent dies
    _stacks_on_sigusr1()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        argv = security.take(argv)
    except RewindError as exc:
        print(f"rewind: error: {exc}", file=sys.stderr)
        return 2
    # The image's HEALTHCHECK runs `rewind health` every 10 s: it builds only its own parser.
    args = build_parser(("health",) if argv[:1] == ["health"] else GROUPS).parse_args(argv)
    _configure_logging(args.log_level)
    try:
        return args.func(args)
    except RewindError as exc:
        print(f"rewind: error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"rewind: error: this command needs the '{extra}' extra ({exc.name} is not installed): "
              f"pip install 'rewind[{extra}]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# Top-level modules that only an extra installs, and that extra: `pip install rewind` is the SDK and the
# client commands, so a service command run there names what to install instead of a traceback.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torchrl", "tensordict", "boto3", "botocore", "gymnasium", "yaml", "safetensors", "matplotlib",
                     "fastapi", "starlette", "uvicorn", "jinja2", "prometheus_client", "grpc_reflection"), "services"),
    "tensorboard": "tensorboard",
    **dict.fromkeys(("dm_control", "mujoco"), "dmc"),
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra that installs the module `exc` could not find, if an extra does."""
    return EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
