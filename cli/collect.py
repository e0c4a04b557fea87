"""`rewind collect`: a collector process (every CollectSettings field is a flag)."""

from __future__ import annotations

import argparse
import logging
import os

from rewind_cli import serving
from rewind_runtime import host_share
from rewind_runtime.host_share import HostShare
from rewind_runtime.threads import configure_torch_threads
from rewind_trainer.collect_settings import CollectSettings

EXAMPLES = """examples:
  rewind train --buffer-addresses 10.0.0.1:50051,10.0.0.2:50051 --collectors 2              # the learner
  rewind collect --buffer-addresses 10.0.0.1:50051,10.0.0.2:50051 --learner-address 10.0.0.9:50053 \\
      --collector-id collector-3 --seed 103
  rewind collect ... --run-id pendulum-v1-seed1     # while the learner does not answer: its latest checkpoint's
  rewind collect ... --episodes 10                   # ten episodes, then exit

Each episode goes whole to one shard, by its routing key (the run's routing seed, --collector-id, the
episode's index), stamped with the run's generation. SIGTERM drops the episode in progress and exits 0;
<--state-dir>/<collector-id>.json keeps the next episode's index, so a restarted collector carries on."""


def add_parser(groups: argparse._SubParsersAction) -> None:
    """Register `rewind collect`."""
    parser = groups.add_parser("collect", help="act with the learner's newest weights and send episodes to the "
                                               "replay's shards",
                               description="A collector: acts with MPPI using the learner's newest published "
                                           "weights (GetWeights) and sends whole episodes to the replay's shards.",
                               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    serving.add_settings(parser, CollectSettings, "TOML or YAML file of settings; flags and REWIND_* variables "
                                                  "override it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = serving.load_settings(args, CollectSettings).settings
    import torch

    from rewind_trainer.collect import collect, stopped_by_signals  # torch and the agent: not for --help

    # Like a training, a collector takes its share of the host's CPUs among the trainings and collectors there.
    share = HostShare.join(host_share.default_folder(), configure_torch_threads(0, "collector").threads,
                           torch.set_num_threads)
    try:
        with stopped_by_signals() as stop:
            result = collect(settings, stop, between_episodes=share.apply)
    finally:
        share.leave()
    how = "stopped" if result.stopped else "done"
    print(f"{how}: {settings.collector_id} sent {result.episodes} episode(s), next index {result.next_index}, "
          f"policy version {result.version}", flush=True)
    if result.stopped:
        # Within 2 s of SIGTERM: the state file is written and the channels closed, so the interpreter's own
        # teardown (half a second of torch and gRPC) is skipped.
        logging.shutdown()
        os._exit(settings.preempt_exit_code)
    return 0
