from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: TrainerStatus
    def __init__(self, status: _Optional[_Union[TrainerStatus, _Mapping]] = ...) -> None: ...

class TrainerStatus(_message.Message):
    __slots__ = ("agent_id", "run_id", "task", "phase", "step", "total_steps", "episode", "steps_per_second", "recent_returns", "eval_return", "losses", "last_checkpoint", "resumed_from", "acting_mode", "torch_threads", "torch_threads_reason", "eval_step", "updates", "collectors", "limiter_retries")
    class LossesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    RECENT_RETURNS_FIELD_NUMBER: _ClassVar[int]
    EVAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    ACTING_MODE_FIELD_NUMBER: _ClassVar[int]
    TORCH_THREADS_FIELD_NUMBER: _ClassVar[int]
    TORCH_THREADS_REASON_FIELD_NUMBER: _ClassVar[int]
    EVAL_STEP_FIELD_NUMBER: _ClassVar[int]
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    COLLECTORS_FIELD_NUMBER: _ClassVar[int]
    LIMITER_RETRIES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    task: str
    phase: str
    step: int
    total_steps: int
    episode: int
    steps_per_second: float
    recent_returns: _containers.RepeatedScalarFieldContainer[float]
    eval_return: float
    losses: _containers.ScalarMap[str, float]
    last_checkpoint: CheckpointState
    resumed_from: str
    acting_mode: str
    torch_threads: int
    torch_threads_reason: str
    eval_step: int
    updates: int
    collectors: int
    limiter_retries: int
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., task: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., episode: _Optional[int] = ..., steps_per_second: _Optional[float] = ..., recent_returns: _Optional[_Iterable[float]] = ..., eval_return: _Optional[float] = ..., losses: _Optional[_Mapping[str, float]] = ..., last_checkpoint: _Optional[_Union[CheckpointState, _Mapping]] = ..., resumed_from: _Optional[str] = ..., acting_mode: _Optional[str] = ..., torch_threads: _Optional[int] = ..., torch_threads_reason: _Optional[str] = ..., eval_step: _Optional[int] = ..., updates: _Optional[int] = ..., collectors: _Optional[int] = ..., limiter_retries: _Optional[int] = ...) -> None: ...

class CheckpointState(_message.Message):
    __slots__ = ("path", "step", "blocking_ms", "error", "in_flight")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BLOCKING_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    path: str
    step: int
    blocking_ms: float
    error: str
    in_flight: int
    def __init__(self, path: _Optional[str] = ..., step: _Optional[int] = ..., blocking_ms: _Optional[float] = ..., error: _Optional[str] = ..., in_flight: _Optional[int] = ...) -> None: ...

class CreateCheckpointRequest(_message.Message):
    __slots__ = ("wait",)
    WAIT_FIELD_NUMBER: _ClassVar[int]
    wait: bool
    def __init__(self, wait: _Optional[bool] = ...) -> None: ...

class CreateCheckpointResponse(_message.Message):
    __slots__ = ("step", "path")
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    step: int
    path: str
    def __init__(self, step: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    def __init__(self, step: _Optional[int] = ...) -> None: ...

class GetWeightsRequest(_message.Message):
    __slots__ = ("min_version",)
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    def __init__(self, min_version: _Optional[int] = ...) -> None: ...

class GetWeightsResponse(_message.Message):
    __slots__ = ("version", "generation", "step", "total_bytes", "sha256", "chunk", "offset", "routing_seed", "live_shards")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    ROUTING_SEED_FIELD_NUMBER: _ClassVar[int]
    LIVE_SHARDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    generation: int
    step: int
    total_bytes: int
    sha256: str
    chunk: bytes
    offset: int
    routing_seed: int
    live_shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, version: _Optional[int] = ..., generation: _Optional[int] = ..., step: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., chunk: _Optional[bytes] = ..., offset: _Optional[int] = ..., routing_seed: _Optional[int] = ..., live_shards: _Optional[_Iterable[int]] = ...) -> None: ...
