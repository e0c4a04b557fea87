"""The trainer's own settings: task, schedule, services, checkpoints. The
agent's hyperparameters live in hparams.py.

Every field is a `rewind train` flag (underscores become dashes) and a key of
the YAML file given with --config; flags override the file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from rewind.errors import InvalidArgument

# Fields a resumed run may change; each change is applied and recorded.
SAFE_ON_RESUME = frozenset({
    "steps", "learning_rate", "eval_freq", "eval_episodes", "checkpoint_interval_steps",
    "checkpoint_interval_episodes", "keep_last_n_checkpoints", "keep_every", "keep_best", "device",
    "stop_grace_s", "preempt_exit_code",
})
# Where the run happens, not what it learns: free to differ on resume, and not recorded.
PLACEMENT = frozenset({
    "buffer_address", "checkpoint_address", "out_dir", "host", "port", "prefetch", "torch_threads",
    "resume_from_checkpoint", "agent_id", "run_id", "wait_for_services_s",
})


@dataclass(frozen=True)
class TrainSettings:
    """What `rewind train` runs."""

    # task and schedule
    task: str = "Pendulum-v1"
    seed: int = 1
    steps: int = 8_000                 # environment steps (after action repeat)
    seed_steps: int = 0                # random-action steps before learning; 0: max(1000, 5 episodes)
    action_repeat: int = 1
    model_size: str = "1"
    mpc: bool = True                   # plan with MPPI; False acts with the policy prior only
    learning_rate: float = 3e-4
    eval_freq: int = 2_000
    eval_episodes: int = 10
    device: str = "cpu"
    agent: dict[str, Any] = field(default_factory=dict)  # other AgentConfig fields, e.g. {"num_samples": 256}

    # services
    buffer_address: str = "127.0.0.1:50051"
    checkpoint_address: str = "127.0.0.1:50052"
    prefetch: int = 4                  # batches the buffer service samples ahead
    host: str = "127.0.0.1"            # the trainer's own gRPC service
    port: int = 50053                  # 0 picks a free port; -1 runs no service
    out_dir: str = "runs"              # metrics.csv and learning_curve.png go to <out_dir>/<agent_id>/<run_id>/
    torch_threads: int = 0             # 0: torch's default
    wait_for_services_s: float = 10.0  # at start; a cluster may start the trainer before its services

    # checkpoints
    agent_id: str = "tdmpc2"
    run_id: str = ""                   # default: <task>-seed<seed>, so a rerun finds its checkpoints
    checkpoint_interval_steps: int = 0
    checkpoint_interval_episodes: int = 10
    keep_last_n_checkpoints: int = 3   # 0 keeps all
    keep_every: int = 0                # also keep every checkpoint whose step is a multiple of this
    keep_best: int = 0                 # also keep the N best by eval_return
    resume_from_checkpoint: str = ""   # a checkpoint path, "latest" or "best"
    stop_grace_s: float = 20.0         # SIGTERM: seconds to write the checkpoint before exiting
    preempt_exit_code: int = 0         # exit code after a SIGTERM checkpoint

    def __post_init__(self) -> None:
        for name in ("steps", "eval_freq", "action_repeat", "prefetch"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("seed_steps", "eval_episodes", "checkpoint_interval_steps", "checkpoint_interval_episodes",
                     "keep_last_n_checkpoints", "keep_every", "keep_best", "torch_threads"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name}: must be zero or more, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise InvalidArgument(f"learning_rate: must be positive, got {self.learning_rate}")
        if not self.wait_for_services_s > 0:
            raise InvalidArgument(f"wait_for_services_s: must be positive, got {self.wait_for_services_s}")
        if not self.stop_grace_s > 0:
            raise InvalidArgument(f"stop_grace_s: must be positive, got {self.stop_grace_s}")
        if not -1 <= self.port <= 65535:
            raise InvalidArgument(f"port: must be -1 (no service), 0 (any) or a TCP port, got {self.port}")
        if not 0 <= self.preempt_exit_code <= 255:
            raise InvalidArgument(f"preempt_exit_code: must be 0..255, got {self.preempt_exit_code}")
        if not isinstance(self.agent, dict):
            raise InvalidArgument(f"agent: must be a mapping of AgentConfig fields, got {self.agent!r}")
        for name in ("lr", "obs_dim", "action_dim", "episode_length", "model_size", "mpc"):
            if name in self.agent:
                raise InvalidArgument(f"agent.{name}: set it with its own setting, not under agent")

    @property
    def run(self) -> str:
        """The run id: run_id, or one derived from the task and seed."""
        if self.run_id:
            return self.run_id
        return re.sub(r"[^A-Za-z0-9._-]", "-", f"{self.task}-seed{self.seed}").lower()

    def replace(self, **changes) -> TrainSettings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "settings") -> TrainSettings:
        """Build from a mapping (a YAML file, a checkpoint's config).

        Raises:
            InvalidArgument: an unknown key, naming it and where it came from.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgument(f"{source}: unknown setting(s) {', '.join(unknown)}; "
                                  f"see `rewind train --help` for the names")
        return cls(**values)


def load_yaml(path: str) -> dict[str, Any]:
    """The settings in a YAML file, dashes in keys read as underscores.

    Raises:
        InvalidArgument: the file is missing, not YAML, or not a mapping.
    """
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except OSError as exc:
        raise InvalidArgument(f"config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"config: {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise InvalidArgument(f"config: {path} must hold a mapping of settings, found {type(values).__name__}")
    return {str(k).replace("-", "_"): v for k, v in values.items()}
