"""`rewind trainer ...`: status, checkpoint-now and stop of a running trainer."""

from __future__ import annotations

import argparse

from rewind import addresses

EXAMPLES = """examples:
  rewind trainer status --address 127.0.0.1:50053
  rewind trainer checkpoint                 # checkpoint now, wait for the commit
  rewind trainer stop                       # checkpoint and exit, as on SIGTERM
"""


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind trainer`."""
    trainer = groups.add_parser("trainer", help="status, checkpoint-now and stop of a running trainer",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = trainer.add_subparsers(dest="command", required=True)
    for name, text, func, timeout in (("status", "print the trainer's status", status, 10.0),
                                      ("checkpoint", "checkpoint now", checkpoint, 600.0),
                                      ("stop", "checkpoint and exit", stop, 10.0)):
        p = commands.add_parser(name, help=text)
        p.add_argument("--address", default=addresses.TRAINER_ADDRESS, help="host:port of the trainer service")
        p.add_argument("--timeout", type=float, default=timeout, help="seconds to wait")
        p.set_defaults(func=func)
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "checkpoint":
            p.add_argument("--no-wait", action="store_true", help="return once requested, not once committed")


def _client(args: argparse.Namespace):
    from rewind import TrainerClient

    return TrainerClient(args.address, timeout=args.timeout)


def status(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    with _client(args) as client:
        s = client.status()
    if args.json:
        print(json_format.MessageToJson(s))
        return 0
    evaluated = f"{s.eval_return:.1f} at step {s.eval_step}" if s.eval_step >= 0 else "n/a (no evaluation yet)"
    print(f"{s.agent_id}/{s.run_id} {s.task}: {s.phase}, step {s.step}/{s.total_steps}, episode {s.episode}, "
          f"{s.steps_per_second:.1f} steps/s, eval return {evaluated}")
    print(f"torch threads: {s.torch_threads} ({s.torch_threads_reason})")
    if s.collectors:
        print(f"learner of {s.collectors} collector(s): {s.updates} updates (the policy version it publishes), "
              f"{s.limiter_retries} stream(s) the rate limiters held back")
    if s.last_checkpoint.path:
        print(f"last checkpoint: {s.last_checkpoint.path}")
    return 0


def checkpoint(args: argparse.Namespace) -> int:
    with _client(args) as client:
        step, path = client.checkpoint(wait=not args.no_wait, timeout=args.timeout)
    print(path or f"requested at step {step}")
    return 0


def stop(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(f"stopping at step {client.stop()}")
    return 0
