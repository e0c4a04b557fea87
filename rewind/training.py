"""rewind.train(): train or resume from Python, with the names `rewind train` takes.

    import rewind
    result = rewind.train(task="Pendulum-v1", steps=8000, local_services=True)
    result = rewind.train(resume_from_checkpoint="latest", steps=16000, local_services=True)
"""

from __future__ import annotations

from typing import Any


def train(*, local_services: bool = False, store: str = "file://./rewind-data", progress: bool = True,
          **settings: Any):
    """Train (or resume) a TD-MPC2 agent through the buffer and checkpoint services.

    Args:
        local_services: start a buffer and a checkpoint service for this run
            (on free loopback ports), instead of using buffer_address and
            checkpoint_address.
        store: the checkpoint store of the local services.
        progress: show a progress bar.
        **settings: rewind_trainer.settings.TrainSettings fields, e.g. task,
            steps, learning_rate, resume_from_checkpoint ("latest", "best" or
            a path), checkpoint_interval_episodes, keep_last_n_checkpoints.
            On resume only these override the checkpoint's settings.

    Returns:
        rewind_trainer.run.TrainResult: step, episode, eval_return, the last
        checkpoint's path, the agent, and whether the run was stopped.

    Raises:
        rewind.errors.InvalidArgument: an unknown setting or a bad value.
        rewind.errors.Unavailable: a service cannot be reached.
        rewind.errors.FailedPrecondition: the checkpoint does not fit (naming each field).
    """
    from rewind_trainer.run import local_services as start_services
    from rewind_trainer.run import train as run
    from rewind_trainer.settings import TrainSettings

    parsed = TrainSettings.from_dict(settings, source="train()")
    if not local_services:
        return run(parsed, explicit=set(settings), progress=progress)
    with start_services(parsed, store) as placed:
        return run(placed, explicit=set(settings), progress=progress)
