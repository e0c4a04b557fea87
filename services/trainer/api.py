"""rewind.train(): train or resume from Python, with the names `rewind train` takes.

    import rewind
    result = rewind.train(task="Pendulum-v1", steps=8000, local_services=True)
    result = rewind.train(resume_from_checkpoint="latest", steps=16000, local_services=True)

The trainer package provides this function to the SDK's namespace through the
`rewind.api` entry point (see pyproject.toml); `launch` is what both it and
`rewind train` call.
"""

from __future__ import annotations

from typing import Any

from rewind.checkpoint_paths import local_checkpoint
from rewind_runtime.settings import from_mapping
from rewind_trainer.connections import local_services
from rewind_trainer.run import TrainResult
from rewind_trainer.run import train as run
from rewind_trainer.service import Control
from rewind_trainer.settings import TrainSettings


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
    settings = placement(settings, explicit)
    if not settings.local_services:
        return run(settings, explicit=explicit, handle_signals=handle_signals, control=control)
    with local_services(settings) as placed:
        return run(placed, explicit=explicit, handle_signals=handle_signals, control=control)


def placement(settings: TrainSettings, explicit: set[str]) -> TrainSettings:
    """Where the run's services come from.

    - A store named (--store or --checkpoint-dir, as seed 000's checkpoint_dir=) means local services on it.
    - With local services and no store named, a checkpoint path on this machine names its store, so
      `--resume-from-checkpoint ./rewind-data/tdmpc2/run/step-N` needs nothing more.
    - Otherwise the services at buffer_address and checkpoint_address are used.
    """
    if {"store", "checkpoint_dir"} & explicit:
        return settings.replace(local_services=True)
    if settings.local_services and settings.resume_from_checkpoint:
        local = local_checkpoint(settings.resume_from_checkpoint)
        if local is not None:
            return settings.replace(store=local.store)
    return settings
