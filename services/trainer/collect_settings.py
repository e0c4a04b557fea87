"""What `rewind collect` runs: every field is a flag, a REWIND_<FIELD> variable and a key of --config."""

from __future__ import annotations

import string
from dataclasses import dataclass

from rewind import addresses
from rewind.errors import InvalidArgument
from rewind_runtime.settings import Settings, setting

ID_CHARS = frozenset(string.ascii_letters + string.digits + "._-")


@dataclass(frozen=True)
class CollectSettings(Settings):
    """A collector: acts with the learner's newest weights and sends whole episodes to the replay's shards."""

    task: str = setting("Pendulum-v1", "Gymnasium id or DMC task: the learner's")
    seed: int = setting(1, "this collector's seed (its environments' and its planner's); give each collector its own")
    action_repeat: int = setting(1, "environment steps per agent step: the learner's", minimum=1)
    collector_id: str = setting("collector-0", "this collector's id: its routing keys' writer, its state file's name")
    learner_address: str = setting(addresses.TRAINER_ADDRESS, "host:port of the learner's trainer service "
                                                              "(GetWeights)")
    buffer_addresses: tuple[str, ...] = setting((), "host:port of each shard of the replay, in the learner's order")
    checkpoint_address: str = setting(addresses.CHECKPOINT_ADDRESS, "host:port of the checkpoint service, whose "
                                      "latest checkpoint of --agent-id/--run-id the collector acts with while the "
                                      "learner does not answer")
    agent_id: str = setting("tdmpc2", "the learner's agent id (for the fallback)")
    run_id: str = setting("", "the learner's run id (for the fallback; empty: no fallback)")
    state_dir: str = setting("collectors", "folder of the collectors' state files (<collector-id>.json: the next "
                                           "episode's index, so that a restarted collector carries on)")
    episodes: int = setting(0, "episodes to collect, then exit (0: until SIGTERM)", minimum=0)
    weights_wait_s: float = setting(60.0, "at start, seconds to wait for weights (from the learner or the "
                                          "fallback) before giving up", above=0)
    device: str = setting("cpu", "cpu or cuda")
    preempt_exit_code: int = setting(0, "exit code after a SIGTERM: in a Kubernetes Job (a JobSet's collector) a "
                                        "non-zero one (143) that its podFailurePolicy ignores, so that a stopped "
                                        "collector is replaced rather than counted complete", minimum=0, maximum=255)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.buffer_addresses:
            raise InvalidArgument("buffer_addresses: a collector needs the replay's shards; give "
                                  "--buffer-addresses host:port,host:port in the learner's order")
        if not self.collector_id or any(c not in ID_CHARS for c in self.collector_id):
            raise InvalidArgument(f"collector_id: {self.collector_id!r} must be letters, digits, '.', '_' or '-'")
