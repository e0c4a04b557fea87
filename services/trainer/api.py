"""rewind.train(): train or resume from Python, with the names `rewind train` takes.

    import rewind
    result = rewind.train(task="Pendulum-v1", steps=8000, local_services=True)
    result = rewind.train(resume_from_checkpoint="latest", steps=16000, local_services=True)

The trainer package provides this function to the SDK's namespace through the
`rewind.api` entry point (see pyproject.toml); `launch` is what both it and
`rewind train` call.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

from rewind.checkpoint_paths import CheckpointLocation, is_local_path, locate_checkpoint
from rewind.errors import InvalidArgument
from rewind.health import answers
from rewind_runtime.settings import from_mapping
from rewind_trainer.connections import local_services
from rewind_trainer.local_collectors import local_collectors
from rewind_trainer.plan import check_task
from rewind_trainer.run import TrainResult
from rewind_trainer.run import train as run
from rewind_trainer.service import Control
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)


def train(**settings: Any) -> TrainResult:
    """Train (or resume) a TD-MPC2 agent through the buffer and checkpoint services.

    Args:
        **settings: TrainSettings fields (or their aliases), e.g. task, steps,
            learning_rate, resume_from_checkpoint ("latest", "best" or a path),
            checkpoint_interval_episodes, keep_last_n_checkpoints, and
            local_services=True to start a buffer and a checkpoint service for
            this run (store= or checkpoint_dir= picks their store). On resume
            only these override the checkpoint's settings.

    Returns:
        TrainResult: step, episode, eval_return, the last checkpoint's path,
        the agent, and whether the run was stopped.

    Raises:
        rewind.errors.InvalidArgument: an unknown setting or a bad value.
        rewind.errors.Unavailable: a service cannot be reached.
        rewind.errors.FailedPrecondition: the checkpoint does not fit (naming each field).
    """
    values = from_mapping(TrainSettings, settings, "train()")
    return launch(TrainSettings(**values), explicit=set(values))


def launch(settings: TrainSettings, *, explicit: set[str], handle_signals: bool = False,
           control: Control | None = None) -> TrainResult:
    """Run against the configured services, or start local ones first (see `placement`)."""
    check_task(settings, explicit)  # a wrong task fails before any service is started
    settings = placement(settings, explicit)
    if not settings.local_services:
        return run(settings, explicit=explicit, handle_signals=handle_signals, control=control)
    with local_services(settings) as (placed, pages_url):
        return run(placed, explicit=explicit, handle_signals=handle_signals, control=control, pages_url=pages_url,
                   companions=partial(local_collectors, placed))


def placement(settings: TrainSettings, explicit: set[str]) -> TrainSettings:
    """Where the run's services come from, decided before anything is started or written.

    - A store named (--store, or --checkpoint-dir as seed 000's checkpoint_dir=) means local services on it.
    - Services named (--buffer-address or --buffer-addresses, --checkpoint-address) are used as they are;
      --shards N (N > 1) alone starts N buffer services, as --local-services --shards N does.
    - With neither, the checkpoint service at the default address is used if one answers;
      if none does (or with --local-services), the run starts its own services, as seeds 000, 001
      and 003 run with nothing but their command. Their store is the one the resume path lies in
      (`--resume-from-checkpoint ./rewind-data/tdmpc2/run/step-N` needs nothing more), else
      --output-dir when given (seed 001 keeps its checkpoints there), else file://./rewind-data.

    Raises:
        InvalidArgument: the resume path is a path on this machine that names no checkpoint.
    """
    location = _resume_location(settings.resume_from_checkpoint)
    if {"store", "checkpoint_dir"} & explicit:
        return settings.replace(local_services=True)
    if not settings.local_services:
        if settings.shards > 1 and not settings.buffer_addresses:
            log.info("--shards %d and no --buffer-addresses: starting the shards for this run", settings.shards)
        elif {"buffer_address", "buffer_addresses", "checkpoint_address"} & explicit or \
                answers(settings.checkpoint_address):
            return settings
        else:
            log.info("no checkpoint service answers at %s: starting a buffer and a checkpoint service for this run "
                     "(name running ones with --buffer-address and --checkpoint-address)", settings.checkpoint_address)
    if location is not None:
        return settings.replace(local_services=True, store=location.store)
    if "out_dir" in explicit:
        return settings.replace(local_services=True, store="file://" + str(Path(settings.out_dir).resolve()))
    return settings.replace(local_services=True)


def _resume_location(which: str) -> CheckpointLocation | None:
    """The checkpoint and store a resume path names; None for latest, best and agent/run/step-N.

    Raises:
        InvalidArgument: a path on this machine that does not exist or has no step folder on its way up.
    """
    if not which:
        return None
    location = locate_checkpoint(which)
    if location is None and is_local_path(which):
        path = Path(which.removeprefix("file://")).expanduser()
        why = "there is no such file or folder" if not path.exists() else "no step-<N> folder is on its path"
        raise InvalidArgument(
            f"resume_from_checkpoint: {which} is not a checkpoint: {why}. A checkpoint is a folder "
            "<store>/<agent_id>/<run_id>/step-<N> (or a file in it); `rewind ckpt ls --store DIR` lists them")
    if location is not None and location.url.startswith("file://") and not Path(location.url[7:]).exists():
        raise InvalidArgument(f"resume_from_checkpoint: {which}: there is no such file or folder "
                              f"(`rewind ckpt ls --store {location.store}` lists the checkpoints there)")
    return location
