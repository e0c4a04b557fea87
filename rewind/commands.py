"""Commands a user can copy: the `rewind train` that resumes a run from one of its checkpoints.

    from rewind.commands import resume_command
    resume_command(manifest["config"]["settings"], checkpoint_path)
    # 'rewind train --local-services --store file:///data/rewind --resume-from-checkpoint file:///data/...'

It works on the settings as a checkpoint's manifest records them (the trainer's
TrainSettings as a dict, config["settings"]), so the history pages, `rewind
train` and anyone holding a manifest print the same command.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from rewind import addresses

# The services a run outside --local-services was pointed at, when not the defaults.
PLACE_FLAGS = {"buffer_address": addresses.BUFFER_ADDRESS, "checkpoint_address": addresses.CHECKPOINT_ADDRESS}
DEFAULT_STORE = "file://./rewind-data"


def store_url(settings: Mapping[str, Any]) -> str:
    """The store of a run's local services: checkpoint_dir (a folder or URL), else store, else ./rewind-data."""
    folder = str(settings.get("checkpoint_dir") or "")
    if folder:
        return folder if "://" in folder else "file://" + folder
    return str(settings.get("store") or DEFAULT_STORE)


def resume_command(settings: Mapping[str, Any], path: str) -> str:
    """The command that continues a run from the checkpoint at `path`.

    Args:
        settings: the run's settings, as a manifest's config["settings"] holds
            them (keys missing from an older manifest count as their defaults).
        path: the checkpoint's path (file://..., s3://... or a local folder).

    Returns:
        A shell-quoted `rewind train` command line: with local services on the
        run's store (and its --shards), or with the service addresses the run
        used when they are not the defaults (a sharded run's --buffer-addresses).
    """
    parts = ["rewind", "train"]
    shards = int(settings.get("shards") or 1)
    if settings.get("local_services"):
        parts += ["--local-services", "--store", store_url(settings)]
        parts += ["--shards", str(shards)] if shards > 1 else []
    else:
        sharded = list(settings.get("buffer_addresses") or ())
        if len(sharded) > 1:  # a sharded run resumes with as many shards, in the same order
            parts += ["--buffer-addresses", ",".join(sharded)]
        for name, default in PLACE_FLAGS.items():
            value = settings.get(name) or default
            if value != default and not (sharded and name == "buffer_address"):
                parts += [f"--{name.replace('_', '-')}", str(value)]
    collectors = int(settings.get("collectors") or 0)
    parts += ["--collectors", str(collectors)] if collectors else []  # a learner's checkpoint resumes a learner
    return shlex.join([*parts, "--resume-from-checkpoint", path])


__all__ = ["resume_command", "store_url"]
