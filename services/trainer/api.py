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

from rewind.errors import InvalidArgument
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
    """Run against the configured services, or start local ones first (settings.local_services).

    Raises:
        InvalidArgument: a store is named without local services (a running checkpoint service has its own).
    """
    if not settings.local_services:
        if {"store", "checkpoint_dir"} & explicit:
            raise InvalidArgument("store: --store and --checkpoint-dir choose the store of --local-services; the "
                                  f"checkpoint service at {settings.checkpoint_address} has its own "
                                  "(rewind ckpt serve --store URL)")
        return run(settings, explicit=explicit, handle_signals=handle_signals, control=control)
    with local_services(settings) as placed:
        return run(placed, explicit=explicit, handle_signals=handle_signals, control=control)
