"""The trainer's settings: task, schedule, services, checkpoints. The agent's
hyperparameters live in hparams.py and are set through `agent`.

Every field is a `rewind train` flag, a REWIND_<FIELD> variable, a key of the
YAML file given with --config and a keyword of `rewind.train()`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from rewind import addresses
from rewind.endpoints import LOOPBACK
from rewind.errors import InvalidArgument
from rewind_runtime.server_settings import ServerSettings
from rewind_runtime.settings import setting
from rewind_trainer.hparams import AgentConfig

# Fields a resumed run may change; each change is applied and recorded.
SAFE_ON_RESUME = frozenset({
    "steps", "learning_rate", "eval_freq", "eval_episodes", "eval_at_start", "checkpoint_interval_steps",
    "checkpoint_interval_episodes", "keep_last_n_checkpoints", "keep_every", "keep_best", "device",
    "stop_grace_s", "preempt_exit_code",
})
# Where and how the run happens, not what it learns: free to differ on resume, and not recorded.
# Every server setting (address, limits, tokens, TLS) is one of them.
PLACEMENT = frozenset({
    "buffer_address", "buffer_addresses", "shards", "checkpoint_address", "out_dir", "prefetch", "torch_threads",
    "resume_from_checkpoint", "agent_id", "run_id", "wait_for_services_s", "local_services", "store",
    "checkpoint_dir", "progress", "heartbeat_interval_s", "tensorboard", "store_endpoints", "publish_weights_every",
    "collectors",
    *(f.name for f in fields(ServerSettings) if f.name not in SAFE_ON_RESUME),
})
# With --collectors and no --publish-weights-every: updates between published policies.
DEFAULT_WEIGHTS_EVERY = 50
# AgentConfig fields that have settings of their own (or come from the task).
NOT_AGENT_KEYS = frozenset({"lr", "obs_dim", "action_dim", "episode_length", "model_size", "mpc"})


@dataclass(frozen=True)
class TrainSettings(ServerSettings):
    """What `rewind train` runs. Its own gRPC service listens on host:port (-1: none)."""

    # Clients find a trainer by its port file or its log; a second run on the host takes a free port.
    GRPC_PORT_FALLS_BACK: ClassVar[bool] = True

    # task and schedule
    task: str = setting("Pendulum-v1", "Gymnasium id (Pendulum-v1) or DMC task (cartpole-swingup, walker-walk)")
    seed: int = setting(1, "seed of the agent, the environment and the random seed actions")
    steps: int = setting(8_000, "agent steps to train to (environment steps / --action-repeat); the counter "
                                "continues on resume", minimum=1, aliases=("total_timesteps",))
    seed_steps: int = setting(0, "random-action steps before learning (0: max(1000, 5 episodes))", minimum=0)
    action_repeat: int = setting(1, "environment steps per agent step", minimum=1)
    model_size: str = setting("1", "tiny (CPU-friendly), 1, 5, 19, 48 or 317 (millions of parameters)")
    mpc: bool = setting(True, "plan with MPPI (--no-mpc acts with the policy prior only)")
    learning_rate: float = setting(3e-4, "Adam learning rate (safe to change on resume)", above=0)
    eval_freq: int = setting(2_000, "evaluate every this many steps", minimum=1)
    eval_episodes: int = setting(10, "episodes per evaluation (0: none)", minimum=0)
    eval_at_start: bool = setting(False, "also evaluate the untrained agent at step 0, as TD-MPC2 does (its MPPI "
                                         "episodes delay the first training step by minutes on a CPU)")
    device: str = setting("cpu", "cpu or cuda")
    agent: dict[str, Any] = setting(factory=dict, help="other agent hyperparameters (hparams.AgentConfig), "
                                                       "e.g. --agent num_samples=256")
    buffer_size: int = setting(1_000_000, "capacity of the trainer's buffers, in transitions", minimum=1)

    # services
    buffer_address: str = setting(addresses.BUFFER_ADDRESS, "host:port of the buffer service")
    buffer_addresses: tuple[str, ...] = setting(
        (), "host:port of each buffer service holding a shard of the replay (a,b,c): training episodes are "
        "split among them and every batch is drawn from all of them; test_buffer stays whole on the first. "
        "Replaces --buffer-address; a resume needs as many shards as the checkpoint's cut")
    shards: int = setting(1, "with --local-services: buffer services to start, each holding buffer_size / N "
                             "transitions of the replay (test_buffer whole on the first); a resume needs as many "
                             "shards as the checkpoint's cut", minimum=1, maximum=64)
    checkpoint_address: str = setting(addresses.CHECKPOINT_ADDRESS, "host:port of the checkpoint service")
    local_services: bool = setting(False, "start a buffer and a checkpoint service on free loopback ports for "
                                          "this run")
    store: str = setting("", "the store of local services, which naming it starts (default "
                             "file://./rewind-data, or --out-dir when given)")
    checkpoint_dir: str = setting("", "a folder (or s3:// URL) as the store of local services: --store file://DIR")
    store_endpoints: tuple[str, ...] = setting(
        LOOPBACK, "stores this trainer may upload trainer.pt and other large checkpoint files to, at the URLs the "
        "checkpoint service presigns (S3): host:port entries or patterns (minio:9000, *.amazonaws.com:443, "
        "127.0.0.1:*); files for a store not listed go through the checkpoint service. With --local-services, "
        "also where the buffer service it starts may upload blocks")
    prefetch: int = setting(4, "batches the buffer service samples ahead", minimum=1)
    publish_weights_every: int = setting(0, "publish the policy's weights for collectors (GetWeights) every N "
                                            "gradient updates, and once at the start (0: never; with --collectors, "
                                            f"every {DEFAULT_WEIGHTS_EVERY})", minimum=0)
    collectors: int = setting(0, "collectors (rewind collect) feeding the replay: the run is then a learner that only "
                                 "updates and evaluates, paced by the shards' rate limiters; with --local-services, "
                                 "it starts them", minimum=0, maximum=256)
    updates_per_step: float = setting(1.0, "with --collectors: gradient updates per collected environment step "
                                           "(TD-MPC2's ratio is 1), held by the shards' rate limiters", above=0)
    port: int = setting(addresses.TRAINER_PORT, "port of this trainer's gRPC service (0: any free one, -1: none; "
                        "left at its default, a free one when the default is taken)", minimum=-1, maximum=65535)
    http_port: int = setting(addresses.TRAINER_HTTP_PORT, "HTTP port of this trainer's /metrics (-1: none, 0: a "
                             "free one; left at its default, also a free one when port is 0 or it is taken)",
                             minimum=-1, maximum=65535)
    grace_s: float = setting(1.0, "seconds in-flight calls to the trainer's service get when it stops", minimum=0)
    out_dir: str = setting("runs", "folder for metrics.csv and learning_curve.png (under <agent-id>/<run-id>/); "
                                   "given, it is also the store of services this run starts", aliases=("output_dir",))
    progress: bool = setting(True, "show a progress bar")
    tensorboard: bool = setting(False, "also write TensorBoard scalars into <out-dir>/<agent-id>/<run-id>/tensorboard "
                                       "(x: environment steps; needs pip install 'rewind[tensorboard]')")
    heartbeat_interval_s: float = setting(30.0, "seconds between uploads of the run's status.json and metrics.csv "
                                                "into its folder in the store (0: only with each checkpoint and at "
                                                "the end)", minimum=0)
    torch_threads: int = setting(0, "torch intra- and inter-op threads (0: the CPUs this process may use "
                                    "(affinity mask and cgroup quota))", minimum=0)
    wait_for_services_s: float = setting(10.0, "at start, seconds to wait for the buffer and checkpoint services "
                                               "to be SERVING", above=0)

    # checkpoints
    agent_id: str = setting("tdmpc2", "agent id: the first folder in the checkpoint store")
    run_id: str = setting("", "run id (default <task>-seed<seed>, so a rerun finds its checkpoints)")
    checkpoint_interval_steps: int = setting(0, "checkpoint every N steps (0: off)", minimum=0)
    checkpoint_interval_episodes: int = setting(10, "checkpoint every N episodes (0: off); a final checkpoint is "
                                                    "always written", minimum=0)
    keep_last_n_checkpoints: int = setting(3, "retention: keep the N newest checkpoints (0: keep all)", minimum=0)
    keep_every: int = setting(0, "retention: also keep every checkpoint whose step is a multiple of N", minimum=0)
    keep_best: int = setting(0, "retention: also keep the N best by eval_return", minimum=0)
    resume_from_checkpoint: str = setting("", "'latest' or 'best' of this run, or a checkpoint: a path (relative, "
                                              "absolute, a file in it), a file:// or s3:// URL, or AGENT/RUN/step-N")
    stop_grace_s: float = setting(20.0, "on SIGTERM, seconds to commit the checkpoint before exiting", above=0)
    preempt_exit_code: int = setting(0, "exit code after a SIGTERM checkpoint (Kubernetes Jobs use a non-zero one)",
                                     minimum=0, maximum=255)

    def __post_init__(self) -> None:
        super().__post_init__()
        known = {f.name for f in dataclasses.fields(AgentConfig)} - NOT_AGENT_KEYS
        for name in self.agent:
            if name in NOT_AGENT_KEYS:
                raise InvalidArgument(f"agent.{name}: set it with its own setting, not under agent")
            if name not in known:
                raise InvalidArgument(f"agent.{name}: not a hyperparameter of the agent; known: "
                                      f"{', '.join(sorted(known))}")
        if len(set(self.buffer_addresses)) != len(self.buffer_addresses):
            raise InvalidArgument(f"buffer_addresses: a shard is named twice in {list(self.buffer_addresses)}")
        if self.updates_per_step != 1.0 and not self.collectors:
            raise InvalidArgument(f"updates_per_step: {self.updates_per_step:g} applies to a learner; give "
                                  "--collectors M too (the single-process loop makes one update per step)")
        if self.collectors and self.port < 0:
            raise InvalidArgument("port: -1 leaves the collectors no GetWeights to call; give a port (0: any free one)")
        if self.buffer_addresses and self.shards not in (1, len(self.buffer_addresses)):
            raise InvalidArgument(f"shards: {self.shards}, but buffer_addresses names {len(self.buffer_addresses)} "
                                  "shards; give one of them (--shards is for --local-services)")

    @property
    def weights_every(self) -> int:
        """Updates between published policies: publish_weights_every, or every 50 for a learner's collectors."""
        return self.publish_weights_every or (DEFAULT_WEIGHTS_EVERY if self.collectors else 0)

    @property
    def shard_count(self) -> int:
        """The shards of the replay: one per buffer address, or --shards."""
        return len(self.buffer_addresses) or self.shards

    @property
    def shard_addresses(self) -> tuple[str, ...]:
        """Where the replay's shards are."""
        return self.buffer_addresses or (self.buffer_address,)

    @property
    def run(self) -> str:
        """The run id: run_id, or one derived from the task and seed."""
        if self.run_id:
            return self.run_id
        return re.sub(r"[^A-Za-z0-9._-]", "-", f"{self.task}-seed{self.seed}").lower()

    @property
    def store_url(self) -> str:
        """The store of --local-services."""
        if self.checkpoint_dir:
            return self.checkpoint_dir if "://" in self.checkpoint_dir else "file://" + self.checkpoint_dir
        return self.store or "file://./rewind-data"
