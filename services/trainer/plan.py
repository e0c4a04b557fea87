"""prepare(): every check a run makes before anything is written, and the Plan it returns.

Order matters for "nothing is lost": the task, the checkpoint to resume from
(found, readable, its settings merged with the ones given), the architecture,
and for a fresh run the absence of earlier checkpoints are all checked here;
only then does the run touch a buffer or the store.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from rewind import versions
from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.checkpoint_paths import SELECTORS, locate_checkpoint
from rewind.errors import FailedPrecondition, InvalidArgument, NotFound
from rewind_trainer.checkpointer import TRAINER_FILE, decode_trainer_state
from rewind_trainer.connections import Services
from rewind_trainer.envs import Env, make_env
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.resume import check_agent_config, merge_settings
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from."""

    path: str
    state: dict                                   # trainer.pt's contents
    cut: dict                                     # the manifest's extra.cut (older checkpoints: {})
    overrides: dict[str, dict[str, Any]]          # {name: {"from": old, "to": new}} applied now
    history: list = field(default_factory=list)   # the overrides of every resume, this one included


@dataclass(frozen=True)
class Plan:
    """What a run will do, checked: its settings, task, agent and where it starts."""

    settings: TrainSettings
    env: Env
    agent_config: AgentConfig
    resume: Resume | None

    @property
    def resumed_from(self) -> str:
        return self.resume.path if self.resume else ""

    @property
    def generation(self) -> int:
        """The run generation: 1 for a fresh run, one more than the checkpoint's for each resume."""
        return int(self.resume.cut.get("generation", 0)) + 1 if self.resume else 1


def prepare(settings: TrainSettings, explicit: set[str], services: Services) -> Plan:
    """Check everything and return the plan; nothing is written.

    Raises:
        InvalidArgument: an unknown task, or seed steps shorter than an episode.
        NotFound, DataLoss: the checkpoint to resume from is missing or corrupt.
        FailedPrecondition: the checkpoint does not fit (naming each field), or a
            fresh run would write over a run that has checkpoints.
    """
    settings, resume = _resolve(settings, explicit, services)
    env = make_env(settings.task, settings.seed, settings.action_repeat)
    settings = settings.replace(seed_steps=settings.seed_steps or max(1000, 5 * env.episode_length))
    if settings.seed_steps < min(env.episode_length, settings.steps):
        raise InvalidArgument(f"seed_steps: {settings.seed_steps} is shorter than one episode of {settings.task} "
                              f"({env.episode_length} steps), and learning starts from stored episodes; give "
                              f"--seed-steps {env.episode_length} or more (or --steps {settings.seed_steps} or fewer)")
    agent_config = AgentConfig(obs_dim=env.obs_dim, action_dim=env.action_dim, episode_length=env.episode_length,
                               model_size=settings.model_size, mpc=settings.mpc, lr=settings.learning_rate,
                               **settings.agent)
    if resume is not None:
        check_agent_config(resume.state["agent_config"], agent_config, resume.path)
    else:
        _check_fresh(services, settings)
    return Plan(settings, env, agent_config, resume)


def check_task(settings: TrainSettings, explicit: set[str]) -> None:
    """An unknown task fails first, before any service is asked (a resumed run's task comes from its checkpoint).

    Raises:
        InvalidArgument: the task is not a known Gymnasium id or DMC task.
    """
    if "task" in explicit or not settings.resume_from_checkpoint:
        make_env(settings.task, settings.seed, settings.action_repeat).close()


def _resolve(settings: TrainSettings, explicit: set[str], services: Services) -> tuple[TrainSettings, Resume | None]:
    """The settings of the run and what it resumes from (None: a fresh run)."""
    which = settings.resume_from_checkpoint
    if not which:
        return settings, None
    try:
        if which in SELECTORS:
            found = services.ckpt.lookup(settings.agent_id, settings.run, which, metric="eval_return", mode="max")
        else:
            location = locate_checkpoint(which)
            found = services.ckpt.lookup(which=location.url if location else which, fall_back=True)
    except NotFound as exc:
        if which != "latest":
            raise
        log.info("no checkpoint of %s/%s yet (%s): starting fresh", settings.agent_id, settings.run, exc)
        return settings, None
    for path, reason in found.skipped:
        log.warning("skipped checkpoint %s: %s", path, reason)
    where = found.checkpoint.path
    if found.skipped:
        log.warning("resume_from_checkpoint: resuming from %s, the newest checkpoint before it that verifies",
                    where)
    cut = json_format.MessageToDict(found.checkpoint.extra).get("cut", {})
    check_shards(cut, settings.shard_count, where)
    check_versions(found.checkpoint, services)  # before trainer.pt is even read: another torch may not load it
    state = decode_trainer_state(services.ckpt.read(where, TRAINER_FILE), where)
    check_learner(state, settings.collectors, where)
    merged, overrides = merge_settings(state["settings"], settings, explicit, where)
    history = list(state.get("overrides", []))
    if overrides:
        history.append({"step": state["loop"]["step"], "changes": overrides})
    return merged, Resume(where, state, cut, overrides, history)


def check_learner(state: dict, collectors: int, where: str) -> None:
    """A learner's checkpoint resumes as a learner, a single-process run's as one: their shards' rate limiters
    differ (a learner's inserts wait for its samples, which the single-process loop would do for ever).

    Raises:
        FailedPrecondition: saying which, and the flag that fits.
    """
    learner = "learner" in state
    if learner and not collectors:
        raise FailedPrecondition(f"resume_from_checkpoint: {where} is a learner's (its episodes came from "
                                 "collectors); resume it with --collectors M")
    if collectors and not learner:
        raise FailedPrecondition(f"resume_from_checkpoint: {where} is a single-process run's, and --collectors "
                                 f"{collectors} makes a learner; resume it without --collectors")


def check_shards(cut: dict, shards: int, where: str) -> None:
    """A cut goes back into as many shards as it was taken from: routing and sampling depend on the count.

    Raises:
        FailedPrecondition: naming both counts.
    """
    saved = int(cut.get("shards", 1))  # checkpoints from before sharding: one buffer service
    if saved != shards:
        raise FailedPrecondition(
            f"resume_from_checkpoint: {where} was cut from {saved} shard{'s' * (saved != 1)}, and this run has "
            f"{shards}; resume it with {saved} (--shards {saved} with --local-services, or {saved} "
            "--buffer-addresses)")


def check_versions(checkpoint: checkpoint_pb2.Checkpoint, services: Services) -> None:
    """The checkpoint's version records against this trainer's, and each buffer's against the buffer
    service that will restore it (rewind.versions.compare has the rules).

    Compatible differences, and records missing from older checkpoints, are logged.

    Raises:
        FailedPrecondition: naming every incompatible version, and where it runs.
    """
    running = {**versions.current(), "checkpoint_format": versions.CHECKPOINT_FORMAT}
    incompatible, different = versions.compare(dict(checkpoint.versions), running, "this trainer")
    targets = {part.file: part.client for part in services.parts}
    reported: dict[str, dict[str, str]] = {}  # one ListBuffers per buffer service
    for entry in checkpoint.buffers:
        client = targets.get(entry.file)
        if client is None:
            continue  # not restored by this trainer
        if client.address not in reported:
            reported[client.address] = client.versions()
        bad, diff = versions.compare(dict(entry.versions), reported[client.address],
                                     f"the buffer service at {client.address}")
        incompatible += [f"buffer {entry.buffer!r}: {m}" for m in bad]
        different += [f"buffer {entry.buffer!r}: {m}" for m in diff]
    if incompatible:
        raise FailedPrecondition(f"resume_from_checkpoint: {checkpoint.path} was written with versions this run "
                                 f"cannot resume: {'; '.join(incompatible)}")
    if different:
        log.info("resume_from_checkpoint: %s was written with other versions (compatible): %s", checkpoint.path,
                 "; ".join(different))


def _check_fresh(services: Services, settings: TrainSettings) -> None:
    """A fresh run must not write over another run's checkpoints."""
    try:
        existing = services.ckpt.list(settings.agent_id, settings.run)
    except NotFound:
        existing = []
    if existing:
        raise FailedPrecondition(
            f"run_id: {settings.agent_id}/{settings.run} already has checkpoints (latest step {existing[-1].step}); "
            "continue it with --resume-from-checkpoint latest, or start another with --run-id NAME")
