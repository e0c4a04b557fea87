"""Resuming: which checkpoint, which settings, and what must not change.

A resumed run takes its settings from the checkpoint. Settings the user gave
explicitly are then applied if they are safe to change (learning rate, total
steps, intervals, retention), and recorded; any other difference (task, seed,
architecture, ...) stops the run before anything is touched, naming each field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rewind.errors import FailedPrecondition
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.settings import PLACEMENT, SAFE_ON_RESUME, TrainSettings

# AgentConfig fields that shape the networks or the data: a checkpoint cannot continue with others.
ARCHITECTURE = ("obs_dim", "action_dim", "episode_length", "model_size", "enc_dim", "mlp_dim", "latent_dim",
                "num_enc_layers", "num_q", "num_bins", "vmin", "vmax", "simnorm_dim", "dropout", "horizon",
                "batch_size")


def merge_settings(saved: dict[str, Any], requested: TrainSettings, explicit: set[str],
                   where: str) -> tuple[TrainSettings, dict[str, dict[str, Any]]]:
    """The settings of the resumed run, and the overrides applied ({name: {"from": old, "to": new}}).

    Args:
        saved: the checkpoint's settings.
        requested: what the user asked for (defaults filled in).
        explicit: names the user gave (flags, YAML keys, train() arguments).
        where: the checkpoint's path, for messages.

    Raises:
        FailedPrecondition: explicit settings that may not change on resume differ, each named.
    """
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {k: v for k, v in saved.items() if k in known}
    wanted = requested.to_dict()
    overrides, mismatched = {}, []
    for name in sorted(known):
        if name in PLACEMENT:
            if name in explicit or name not in ("agent_id", "run_id"):
                values[name] = wanted[name]
            continue
        if name not in explicit or values.get(name) == wanted[name]:
            continue
        if name in SAFE_ON_RESUME:
            overrides[name] = {"from": values.get(name), "to": wanted[name]}
            values[name] = wanted[name]
        elif name == "agent":
            for key in sorted(set(values.get("agent", {})) | set(wanted["agent"])):
                old, new = values.get("agent", {}).get(key), wanted["agent"].get(key)
                if old != new:
                    mismatched.append(f"agent.{key} (checkpoint {old!r}, given {new!r})")
        else:
            mismatched.append(f"{name} (checkpoint {values.get(name)!r}, given {wanted[name]!r})")
    if mismatched:
        raise FailedPrecondition(
            f"resume_from_checkpoint: {where} does not fit: " + "; ".join(mismatched)
            + ". These cannot change on resume; drop them to continue the run, or start a new run "
            "(another --run-id) without --resume-from-checkpoint")
    return TrainSettings(**values), overrides


def check_agent_config(saved: dict[str, Any], current: AgentConfig, where: str) -> None:
    """The networks the checkpoint holds must be the ones this run builds.

    Raises:
        FailedPrecondition: naming each architecture field that differs.
    """
    wrong = [f"{name} (checkpoint {saved.get(name)!r}, this run {getattr(current, name)!r})"
             for name in ARCHITECTURE if saved.get(name) != getattr(current, name)]
    if wrong:
        raise FailedPrecondition(f"resume_from_checkpoint: {where} was trained with another architecture or "
                                 f"task shape: {'; '.join(wrong)}")
