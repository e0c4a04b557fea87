"""collect(): one collector, read top to bottom. It acts with MPPI using the whole agent (planning needs the world
model), with the newest weights it holds, and sends whole episodes to the replay's shards.

    result = collect(CollectSettings(buffer_addresses=("10.0.0.1:50051", "10.0.0.2:50051")))

- Weights come from the learner (GetWeights), with the run's generation and routing seed; while the
  learner does not answer, from the latest checkpoint of --agent-id/--run-id. It acts only once it holds
  some, and takes newer ones between episodes.
- Each episode goes to one shard, by its routing key (the run's routing seed, this collector's id, its
  episode index), stamped with the run's generation: a collector of a run since resumed is refused
  (FAILED_PRECONDITION), fetches the weights of the new generation and goes on.
- Its state is its seed, its id and its episode counter, which a state file keeps after every episode: a
  restarted collector carries on with the next index. Across collectors, exactness is statistical.
- SIGTERM (or SIGINT) drops the partial episode and returns at the next environment step.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from rewind import CheckpointClient, ShardedBufferClient, TrainerClient
from rewind.errors import DeadlineExceeded, FailedPrecondition, RewindError, Unavailable
from rewind.sharded_buffer_client import LIVE, rate_limited
from rewind.trainer_client import Weights
from rewind_trainer.agent import TDMPC2
from rewind_trainer.checkpointer import POLICY_FILE, policy_agent_config
from rewind_trainer.collect_settings import CollectSettings
from rewind_trainer.envs import make_env
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.recorder import EpisodeRecorder

log = logging.getLogger(__name__)

SEED_STRIDE = 1_000_003   # an episode's seed: the collector's seed x this + the episode's index
SPILL_AFTER_S = 1.0       # how long one shard's rate limiter may hold an episode back before the next shard is tried


@dataclass
class CollectResult:
    """How a collector ended."""

    episodes: int          # episodes this process sent
    next_index: int        # the index its next episode will have (what the state file keeps)
    version: int           # the weights' version it acted with last
    stopped: bool          # by SIGTERM/SIGINT, not because --episodes were done


def agent_from(weights: bytes, seed: int, device: str) -> TDMPC2:
    """A TD-MPC2 agent with a policy.safetensors file's tensors and the config its header records."""
    config = policy_agent_config(weights)
    if not config:
        raise FailedPrecondition(f"weights: {POLICY_FILE} records no agent_config; it was not written by a trainer")
    agent = TDMPC2(AgentConfig(**config), seed=seed, device=device)
    load_into(agent, weights)
    return agent


def load_into(agent: TDMPC2, weights: bytes) -> None:
    """Put a policy file's tensors into the agent (everything acting needs; the target Qs are not in it)."""
    from safetensors.torch import load

    missing, unexpected = agent.model.load_state_dict(load(weights), strict=False)
    if unexpected or any(not key.startswith("target_qs.") for key in missing):
        raise FailedPrecondition(f"weights: the policy does not fit this agent (missing {missing[:3]}, "
                                 f"unexpected {unexpected[:3]})")


class WeightsSource:
    """The newest weights a collector can get: the learner's, else the latest checkpoint's."""

    def __init__(self, settings: CollectSettings) -> None:
        self.settings = settings
        self.learner = TrainerClient(settings.learner_address, timeout=10)
        self.checkpoints = CheckpointClient(settings.checkpoint_address) if settings.run_id else None

    def newest(self, newer_than: int, timeout_s: float) -> Weights | None:
        """Weights newer than `newer_than` within `timeout_s`, or None (keep acting with what it holds)."""
        try:
            return self.learner.weights(min_version=newer_than + 1, timeout=timeout_s)
        except Unavailable as exc:
            return self._fallback(newer_than, exc)
        except RewindError:
            return None  # nothing newer yet

    def _fallback(self, newer_than: int, why: RewindError) -> Weights | None:
        if self.checkpoints is None:
            return None
        try:
            found = self.checkpoints.lookup(self.settings.agent_id, self.settings.run_id, "latest").checkpoint
            fields = found.extra.fields
            # The version the learner published these weights as; older checkpoints record none: their step.
            version = int(fields["policy_version"].number_value) if "policy_version" in fields else int(found.step)
            if version <= newer_than:
                return None
            data = self.checkpoints.read(found, POLICY_FILE)
        except RewindError as exc:
            log.warning("the learner does not answer (%s), nor does the checkpoint service (%s)", why, exc)
            return None
        log.warning("the learner does not answer (%s): acting with %s", why, found.path)
        cut = found.extra.fields["cut"].struct_value.fields if "cut" in found.extra.fields else {}
        generation = int(cut["generation"].number_value) if "generation" in cut else 0
        seed = int(cut["routing_seed"].number_value) if "routing_seed" in cut else 0
        return Weights(version, generation, int(found.step), data, seed)

    def close(self) -> None:
        self.learner.close()
        if self.checkpoints is not None:
            self.checkpoints.close()


def collect(settings: CollectSettings, stop: threading.Event | None = None,
            between_episodes: Callable[[], object] = lambda: None) -> CollectResult:
    """Collect until `settings.episodes` are sent, or `stop` is set (SIGTERM, SIGINT); `between_episodes` runs
    before each episode (the CLI's share of the host's CPUs).

    Raises:
        Unavailable: no weights within weights_wait_s, or every shard is lost.
    """
    stop = stop or threading.Event()
    state_file = Path(settings.state_dir) / f"{settings.collector_id}.json"
    index = json.loads(state_file.read_text())["next_index"] if state_file.exists() else 0
    if index:
        log.info("%s carries on from episode %d (%s)", settings.collector_id, index, state_file)
    source = WeightsSource(settings)
    try:
        weights = _first_weights(source, settings, stop)
        agent = agent_from(weights.data, settings.seed, settings.device)
        replay = ShardedBufferClient(settings.buffer_addresses, writer=settings.collector_id,
                                     routing_seed=weights.routing_seed, generation=weights.generation)
        sent = 0
        with replay:
            while not stop.is_set() and (not settings.episodes or sent < settings.episodes):
                between_episodes()
                episode = _episode(agent, settings, index, stop, seeding=weights.version == 0)
                if episode is None:
                    break  # stopped mid-episode: dropped
                current = _send(replay, episode, index, stop, weights.version, source)
                if current:
                    index, sent = index + 1, sent + 1
                    _save_state(state_file, index)
                if stop.is_set():
                    break
                # A run resumed since (refused: another generation) may restart from an older version: any will do.
                newer = _refresh(source, agent, weights, replay, any_version=not current)
                lag = newer.version - weights.version
                if current:
                    log.info("episode %d: return %.1f, policy version %d (lag %d updates)", index - 1,
                             float(episode["reward"][1:].sum()), weights.version, lag)
                if newer is not weights:  # the learner's word of now, not of when this collector lost a shard
                    _readmit_listed(replay, newer)
                weights = newer
        if stop.is_set():
            log.info("stopping: %s sent %d episode(s); the next has index %d", settings.collector_id, sent, index)
        return CollectResult(sent, index, weights.version, stop.is_set())
    finally:
        source.close()


def _first_weights(source: WeightsSource, settings: CollectSettings, stop: threading.Event) -> Weights:
    """Wait for weights: a collector acts only with some (at least the version a resume restored)."""
    deadline = time.monotonic() + settings.weights_wait_s
    while not stop.is_set() and time.monotonic() < deadline:
        weights = source.newest(-1, min(5.0, max(deadline - time.monotonic(), 0.1)))
        if weights is not None:
            log.info("acting with policy version %d (generation %d)", weights.version, weights.generation)
            return weights
        stop.wait(0.5)  # neither the learner nor a checkpoint has weights yet: ask again
    raise Unavailable(f"weights: none from the learner at {settings.learner_address} (or a checkpoint) within "
                      f"{settings.weights_wait_s:.0f} s; start the learner with --publish-weights-every N")


def _episode(agent: TDMPC2, settings: CollectSettings, index: int, stop: threading.Event,
             seeding: bool = False) -> dict[str, torch.Tensor] | None:
    """One episode, seeded by (seed, index); None when a stop came first (the partial episode is dropped).

    While seeding (the learner has made no update yet: policy version 0), actions are uniformly random, as
    TD-MPC2's seed steps are: planning with an untrained model only costs time.
    """
    seed = settings.seed * SEED_STRIDE + index
    env = make_env(settings.task, seed, settings.action_repeat)
    recorder = EpisodeRecorder()
    random_actions = torch.Generator().manual_seed(seed)
    try:
        with agent.own_generator(seed):
            obs, done = env.reset(), False
            recorder.start(obs, env.action_dim)
            while not done:
                if stop.is_set():
                    log.info("stopping: episode %d dropped after %d steps", index, recorder.steps)
                    return None
                action = env.random_action(random_actions) if seeding else agent.act(obs, t0=recorder.steps == 0)
                obs, reward, terminated, truncated = env.step(action)
                recorder.record(obs, action, reward, terminated)
                done = terminated or truncated
    finally:
        env.close()
    return recorder.tensors()


def _send(replay: ShardedBufferClient, episode: dict, index: int, stop: threading.Event, policy_version: int,
          source: WeightsSource) -> bool:
    """Add the episode under its routing key, recording the policy version it was collected with; False when the
    run moved to a newer generation, or a stop came while the shard's rate limiter held it back (dropped either way).

    A shard whose rate limiter holds the episode back SPILL_AFTER_S passes it to the next shard; when every
    shard holds it back (the learner is behind), it is asked again for as long as it takes, a SIGTERM seen
    between the tries.
    """
    while True:
        replay.load_state_dict({**replay.state_dict(), "episode_index": index})
        try:
            replay.add(episode, policy_version=policy_version, spill_after_s=SPILL_AFTER_S)
            return True
        except DeadlineExceeded as exc:
            if not rate_limited(exc):
                raise
            if stop.is_set():
                log.info("stopping: episode %d dropped while the learner was behind", index)
                return False
        except Unavailable as exc:
            # Every shard is lost for now: wait until the learner lists one it restored.
            log.warning("episode %d waits: %s", index, exc)
            if stop.wait(1.0):
                return False
            current = source.newest(-1, timeout_s=5.0)
            if current is not None:
                _readmit_listed(replay, current)
        except FailedPrecondition as exc:
            if exc.reason == "BUFFER_REPLACED":
                continue  # the learner restored the shard while the insert waited: ask again (the generation decides)
            if exc.reason != "STALE_GENERATION":
                raise
            log.warning("episode %d dropped: %s", index, exc)
            return False


def _readmit_listed(replay: ShardedBufferClient, weights: Weights) -> None:
    """Write again to a shard this collector lost once the learner lists it among the shards it samples: the
    learner restored it from the last cut (a restarted shard is empty until then, and a collector's token may
    not read its stats to tell)."""
    for shard in replay.shards:
        if shard.state != LIVE and shard.index in weights.live_shards:
            replay.readmit(shard.address, check=False)
            log.info("shard %s is back (the learner restored it): episodes go to it again", shard.address)


def _refresh(source: WeightsSource, agent: TDMPC2, weights: Weights, replay: ShardedBufferClient,
             any_version: bool = False) -> Weights:
    """Take newer weights (any, after a generation change) if there are some now; a short wait: acting goes on
    with what it holds."""
    newer = source.newest(-1 if any_version else weights.version, timeout_s=0.2 if not any_version else 10.0)
    if newer is None:
        return weights
    load_into(agent, newer.data)
    replay.generation = newer.generation
    log.info("policy version %d (generation %d), was %d", newer.version, newer.generation, weights.version)
    return newer


def _save_state(path: Path, next_index: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"next_index": next_index}))
    temporary.replace(path)  # never half-written: a kill leaves the old or the new


@contextmanager
def stopped_by_signals() -> Iterator[threading.Event]:
    """An event SIGTERM and SIGINT set (main thread only)."""
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda _num, _frame: stop.set())
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
