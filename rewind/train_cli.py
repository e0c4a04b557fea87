"""`rewind train` (run or resume training) and `rewind trainer` (talk to a running one)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shlex
import sys
from typing import Any

from rewind import env_flags
from rewind.errors import InvalidArgument

log = logging.getLogger(__name__)

TRAIN_EXAMPLES = """examples:
  rewind train --local-services                          # start a buffer and a checkpoint service, train Pendulum-v1
  rewind train --local-services --resume-from-checkpoint latest
  rewind train --task cartpole-swingup --action-repeat 8 --steps 48000   # needs pip install 'rewind[dmc]'
  rewind train --config run.yaml --learning-rate 1e-4    # flags override the YAML file
  rewind train --resume-from-checkpoint file://./rewind-data/tdmpc2/pendulum-v1-seed1/step-0000004000 --steps 16000
  rewind train --checkpoint-interval-episodes 0 --checkpoint-interval-steps 1000 --keep-last-n-checkpoints 5

A YAML config file holds the same names with underscores (or dashes):
  task: Pendulum-v1
  steps: 8000
  checkpoint_interval_episodes: 10
  agent: {num_samples: 256}

SIGTERM or Ctrl-C writes a checkpoint and exits; --resume-from-checkpoint latest continues it.
"""

TRAINER_EXAMPLES = """examples:
  rewind trainer status --address 127.0.0.1:50053
  rewind trainer checkpoint                 # checkpoint now, wait for the commit
  rewind trainer stop                       # checkpoint and exit, as on SIGTERM
"""

HELP = {
    "task": "Gymnasium id (Pendulum-v1) or DMC task (cartpole-swingup, walker-walk)",
    "seed": "seed of the agent, the environment and the random seed actions",
    "steps": "agent steps to train to (environment steps / --action-repeat; alias --total-timesteps); "
             "the counter continues on resume",
    "seed_steps": "random-action steps before learning (0: max(1000, 5 episodes))",
    "action_repeat": "environment steps per agent step",
    "model_size": "tiny (CPU-friendly), 1, 5, 19, 48 or 317 (millions of parameters)",
    "mpc": "plan with MPPI (--no-mpc acts with the policy prior only)",
    "learning_rate": "Adam learning rate (safe to change on resume)",
    "eval_freq": "evaluate every this many steps",
    "eval_episodes": "episodes per evaluation (0: none)",
    "device": "cpu or cuda",
    "buffer_address": "host:port of the buffer service",
    "checkpoint_address": "host:port of the checkpoint service",
    "prefetch": "batches the buffer service samples ahead",
    "host": "interface of this trainer's gRPC service",
    "port": "port of this trainer's gRPC service (0: any free one, -1: none)",
    "out_dir": "folder for metrics.csv and learning_curve.png (under <agent-id>/<run-id>/)",
    "torch_threads": "torch intra-op threads (0: torch's default)",
    "wait_for_services_s": "at start, seconds to wait for the buffer and checkpoint services to be SERVING",
    "agent_id": "agent id: the first folder in the checkpoint store",
    "run_id": "run id (default <task>-seed<seed>, so a rerun finds its checkpoints)",
    "checkpoint_interval_steps": "checkpoint every N steps (0: off)",
    "checkpoint_interval_episodes": "checkpoint every N episodes (0: off); a final checkpoint is always written",
    "keep_last_n_checkpoints": "retention: keep the N newest checkpoints (0: keep all)",
    "keep_every": "retention: also keep every checkpoint whose step is a multiple of N",
    "keep_best": "retention: also keep the N best by eval_return",
    "resume_from_checkpoint": "a checkpoint path, 'latest' or 'best' of this run",
    "stop_grace_s": "on SIGTERM, seconds to commit the checkpoint before exiting",
    "preempt_exit_code": "exit code after a SIGTERM checkpoint (Kubernetes Jobs use a non-zero one)",
}


def _agent_pair(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def add_parsers(groups: argparse._SubParsersAction) -> None:
    from rewind_trainer.settings import TrainSettings

    train = groups.add_parser("train", help="train (or resume) a TD-MPC2 agent through the services",
                              description="Train a TD-MPC2 agent: episodes go to the buffer service, batches come "
                                          "back from it, checkpoints go to the checkpoint service.",
                              epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML file of settings; flags override it")
    train.add_argument("--local-services", action="store_true",
                       help="start a buffer and a checkpoint service on free loopback ports for this run")
    train.add_argument("--store", help="with --local-services: the checkpoint store (default file://./rewind-data)")
    train.add_argument("--checkpoint-dir", help="with --local-services: a local folder as the store "
                                                "(same as --store file://DIR)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--agent", action="append", type=_agent_pair, metavar="KEY=VALUE",
                       help="an agent hyperparameter (hparams.AgentConfig), e.g. --agent num_samples=256")
    defaults = TrainSettings()
    for f in dataclasses.fields(TrainSettings):
        if f.name == "agent":
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag, "--total-timesteps"] if f.name == "steps" else [flag]
        default = getattr(defaults, f.name)
        helptext = f"{HELP.get(f.name, '')} (default: {default!r})"
        if isinstance(default, bool):
            train.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=helptext)
        else:
            train.add_argument(*names, dest=f.name, type=type(default), default=argparse.SUPPRESS, help=helptext)
    env_flags.enable(train)

    trainer = groups.add_parser("trainer", help="status, checkpoint-now and stop of a running trainer",
                                epilog=TRAINER_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = trainer.add_subparsers(dest="command", required=True)
    for name, text in (("status", "print the trainer's status"), ("checkpoint", "checkpoint now"),
                       ("stop", "checkpoint and exit")):
        p = commands.add_parser(name, help=text)
        p.add_argument("--address", default="127.0.0.1:50053", help="host:port of the trainer service")
        p.add_argument("--timeout", type=float, default=600.0 if name == "checkpoint" else 10.0,
                       help="seconds to wait")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
        if name == "checkpoint":
            p.add_argument("--no-wait", action="store_true", help="return once requested, not once committed")


def settings_from_args(args: argparse.Namespace):
    """(TrainSettings, the names given explicitly) from --config and the flags."""
    from rewind_trainer.settings import TrainSettings, load_yaml

    values: dict[str, Any] = load_yaml(args.config) if args.config else {}
    source = f"config {args.config}" if args.config else "settings"
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)
             if f.name != "agent" and hasattr(args, f.name)}
    if args.agent:
        flags["agent"] = {**values.get("agent", {}), **dict(args.agent)}
    values.update(flags)
    return TrainSettings.from_dict(values, source=source), set(values)


def resume_command(args: argparse.Namespace, settings, path: str) -> str:
    parts = ["rewind", "train"]
    if args.local_services:
        parts += ["--local-services", "--store", _store(args)]
    else:
        if settings.buffer_address != "127.0.0.1:50051":
            parts += ["--buffer-address", settings.buffer_address]
        if settings.checkpoint_address != "127.0.0.1:50052":
            parts += ["--checkpoint-address", settings.checkpoint_address]
    return shlex.join([*parts, "--resume-from-checkpoint", path])


def _store(args: argparse.Namespace) -> str:
    if args.checkpoint_dir:
        return "file://" + args.checkpoint_dir
    return args.store or "file://./rewind-data"


def run_train(args: argparse.Namespace) -> int:
    from rewind_trainer.run import local_services, train

    settings, explicit = settings_from_args(args)
    if not args.local_services:
        # REWIND_STORE is also the checkpoint service's setting; only a flag is a mistake here.
        for name in ("store", "checkpoint_dir"):
            if env_flags.env_name(name) in getattr(args, "from_environment", ()):
                setattr(args, name, None)
    if (args.store or args.checkpoint_dir) and not args.local_services:
        raise InvalidArgument("store: --store and --checkpoint-dir choose the store of --local-services; the "
                              f"checkpoint service at {settings.checkpoint_address} has its own "
                              "(rewind ckpt serve --store URL)")
    if args.local_services:
        with local_services(settings, _store(args)) as placed:
            result = train(placed, explicit=explicit, progress=not args.no_progress, handle_signals=True)
    else:
        result = train(settings, explicit=explicit, progress=not args.no_progress, handle_signals=True)
    s = result.settings
    ret = "n/a" if math.isnan(result.eval_return) else f"{result.eval_return:.1f}"
    verb = "stopped" if result.stopped else "done"
    print(f"{verb}: {s.task} step {result.step}/{s.steps}, episode {result.episode}, "
          f"evaluation return {ret} ({s.eval_episodes} episodes, {result.agent.mode})")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    print(f"metrics: {result.run_dir / 'metrics.csv'}  curve: {result.run_dir / 'learning_curve.png'}")
    if result.checkpoint:
        more = "" if result.stopped else f" --steps {2 * s.steps}"
        print(f"resume: {resume_command(args, s, result.checkpoint)}{more}")
    if result.exit_code:
        print("rewind: error: the last checkpoint was not committed; resume from the previous one "
              "(--resume-from-checkpoint latest)", file=sys.stderr)
    return result.exit_code


def run_trainer(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from rewind.trainer_client import TrainerClient

    with TrainerClient(args.address, timeout=args.timeout) as client:
        if args.command == "status":
            status = client.status()
            if args.json:
                print(json_format.MessageToJson(status))
            else:
                print(f"{status.agent_id}/{status.run_id} {status.task}: {status.phase}, step {status.step}/"
                      f"{status.total_steps}, episode {status.episode}, {status.steps_per_second:.1f} steps/s, "
                      f"eval return {status.eval_return:.1f}")
                if status.last_checkpoint.path:
                    print(f"last checkpoint: {status.last_checkpoint.path}")
            return 0
        if args.command == "checkpoint":
            step, path = client.checkpoint(wait=not args.no_wait, timeout=args.timeout)
            print(path or f"requested at step {step}")
            return 0
        print(f"stopping at step {client.stop()}")
        return 0
