"""`rewind train`: run or resume training (every TrainSettings field is a flag)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from rewind.commands import resume_command
from rewind.errors import InvalidArgument
from rewind_cli import serving
from rewind_runtime.settings import flags, from_mapping, parse_pair, render_yaml
from rewind_trainer.settings import TrainSettings

EXAMPLES = """examples:
  rewind train                                           # train Pendulum-v1 (with no service running: its own)
  rewind train --local-services --resume-from-checkpoint latest
  rewind train --task cartpole-swingup --action-repeat 8 --steps 48000   # needs pip install 'rewind[dmc]'
  rewind train --config run.yaml --learning-rate 1e-4    # flags override the YAML file
  rewind train --resume-from-checkpoint rewind-data/tdmpc2/pendulum-v1-seed1/step-0000004000 --steps 16000
  rewind train task=Pendulum-v1 checkpoint_dir=./checkpoints agent.num_samples=256   # TD-MPC2's (Hydra's) form
  rewind train --checkpoint-interval-episodes 0 --checkpoint-interval-steps 1000 --keep-last-n-checkpoints 5
  rewind train --config run.yaml --print-config          # the settings it would run with, as a YAML file
  rewind train --tensorboard                             # also TensorBoard scalars (pip install 'rewind[tensorboard]')

A YAML config file holds the same names with underscores (or dashes):
  task: Pendulum-v1
  steps: 8000
  checkpoint_interval_episodes: 10
  agent: {num_samples: 256}

SIGTERM or Ctrl-C writes a checkpoint and exits; --resume-from-checkpoint latest continues it.
The run's status and metrics go into its folder in the store (history/status.json, history/metrics.csv)
with each checkpoint and every --heartbeat-interval-s; the checkpoint service's history pages show them."""

def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind train`."""
    train = groups.add_parser("train", help="train (or resume) a TD-MPC2 agent through the services",
                              description="Train a TD-MPC2 agent: episodes go to the buffer service, batches come "
                                          "back from it, checkpoints go to the checkpoint service.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    serving.add_settings(train, TrainSettings, "YAML file of settings; flags and REWIND_* variables override it")
    train.add_argument("--print-config", action="store_true",
                       help="print the settings this command would run with, as a --config YAML file, and exit")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="settings in TD-MPC2's (Hydra's) form, with the names of the flags: task=Pendulum-v1 "
                            "steps=16000 agent.num_samples=256")
    train.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> tuple[TrainSettings, set[str]]:
    """(TrainSettings, the names given explicitly) from --config, REWIND_* variables and the flags.

    REWIND_STORE is also the checkpoint service's setting: a trainer told where its
    services are (compose, Kubernetes) ignores it, since it starts none of its own.
    """
    loaded = serving.load_settings(args, TrainSettings, **overrides_of(args))
    settings, explicit = loaded.settings, set(loaded.explicit)
    if not settings.local_services and {"buffer_address", "checkpoint_address"} & explicit:
        ignored = {"store", "checkpoint_dir"} & loaded.from_environment
        settings = settings.replace(**dict.fromkeys(ignored, ""))
        explicit -= ignored
    return settings, explicit


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """KEY=VALUE positional arguments as settings (agent.KEY=VALUE sets one agent hyperparameter).

    Raises:
        InvalidArgument: not KEY=VALUE, an unknown name, or a setting also given as a flag.
    """
    values: dict[str, Any] = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{item!r}: expected KEY=VALUE (e.g. steps=16000), or a --flag")
        if key.startswith("agent."):
            values.setdefault("agent", {}).update(dict([parse_pair(f"{key.removeprefix('agent.')}={value}")]))
        else:
            values[key.replace("-", "_")] = value
    given = from_mapping(TrainSettings, values, "KEY=VALUE arguments")
    both = sorted(set(given) & set(flags(TrainSettings, args)))
    if both:
        raise InvalidArgument(f"{', '.join(both)}: given both as KEY=VALUE and as a flag; give one")
    return given


def run(args: argparse.Namespace) -> int:
    settings, explicit = settings_from_args(args)
    if args.print_config:
        print(render_yaml(settings), end="")
        return 0
    from rewind_trainer.api import launch  # torch and the agent: not for printing the settings

    result = launch(settings, explicit=explicit, handle_signals=True)
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
        placed = s if s.local_services else settings  # local services: their store, not their random ports
        print(f"resume: {resume_command(placed.to_dict(), result.checkpoint)}{more}")
    if s.local_services:
        # the services this run started are gone; the history pages can be served straight off the store
        print(f"browse it again: rewind ckpt web --store {s.store_url}")
    if not result.committed:
        print("rewind: error: the last checkpoint was not committed; resume from the previous one "
              "(--resume-from-checkpoint latest)", file=sys.stderr)
    return result.exit_code
