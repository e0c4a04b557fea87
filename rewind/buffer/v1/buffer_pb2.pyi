from rewind.tensor.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BufferSettings(_message.Message):
    __slots__ = ("buffer_size", "batch_size", "min_history", "horizon", "max_episode_length", "samples_per_insert", "min_size_to_sample", "error_buffer", "inserts_wait")
    BUFFER_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MIN_HISTORY_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    MAX_EPISODE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_INSERT_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_TO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_BUFFER_FIELD_NUMBER: _ClassVar[int]
    INSERTS_WAIT_FIELD_NUMBER: _ClassVar[int]
    buffer_size: int
    batch_size: int
    min_history: int
    horizon: int
    max_episode_length: int
    samples_per_insert: float
    min_size_to_sample: int
    error_buffer: str
    inserts_wait: bool
    def __init__(self, buffer_size: _Optional[int] = ..., batch_size: _Optional[int] = ..., min_history: _Optional[int] = ..., horizon: _Optional[int] = ..., max_episode_length: _Optional[int] = ..., samples_per_insert: _Optional[float] = ..., min_size_to_sample: _Optional[int] = ..., error_buffer: _Optional[str] = ..., inserts_wait: _Optional[bool] = ...) -> None: ...

class RateLimiterStats(_message.Message):
    __slots__ = ("samples_per_insert", "min_size_to_sample", "min_diff", "max_diff", "inserts_wait", "paused", "inserts", "samples", "can_insert", "can_sample", "inserts_blocked_calls", "inserts_blocked_seconds", "samples_blocked_calls", "samples_blocked_seconds", "inserts_waiting", "samples_waiting")
    SAMPLES_PER_INSERT_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_TO_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    MIN_DIFF_FIELD_NUMBER: _ClassVar[int]
    MAX_DIFF_FIELD_NUMBER: _ClassVar[int]
    INSERTS_WAIT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    INSERTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CAN_INSERT_FIELD_NUMBER: _ClassVar[int]
    CAN_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    INSERTS_BLOCKED_CALLS_FIELD_NUMBER: _ClassVar[int]
    INSERTS_BLOCKED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_BLOCKED_CALLS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_BLOCKED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INSERTS_WAITING_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_WAITING_FIELD_NUMBER: _ClassVar[int]
    samples_per_insert: float
    min_size_to_sample: int
    min_diff: float
    max_diff: float
    inserts_wait: bool
    paused: bool
    inserts: int
    samples: int
    can_insert: bool
    can_sample: bool
    inserts_blocked_calls: int
    inserts_blocked_seconds: float
    samples_blocked_calls: int
    samples_blocked_seconds: float
    inserts_waiting: int
    samples_waiting: int
    def __init__(self, samples_per_insert: _Optional[float] = ..., min_size_to_sample: _Optional[int] = ..., min_diff: _Optional[float] = ..., max_diff: _Optional[float] = ..., inserts_wait: _Optional[bool] = ..., paused: _Optional[bool] = ..., inserts: _Optional[int] = ..., samples: _Optional[int] = ..., can_insert: _Optional[bool] = ..., can_sample: _Optional[bool] = ..., inserts_blocked_calls: _Optional[int] = ..., inserts_blocked_seconds: _Optional[float] = ..., samples_blocked_calls: _Optional[int] = ..., samples_blocked_seconds: _Optional[float] = ..., inserts_waiting: _Optional[int] = ..., samples_waiting: _Optional[int] = ...) -> None: ...

class FieldSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.Dtype
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.Dtype, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class BufferStats(_message.Message):
    __slots__ = ("name", "settings", "transitions", "episodes", "ready", "device", "bytes", "episodes_added", "episodes_evicted", "batches_sampled", "schema", "rate_limiter", "sampleable_starts", "sampleable_episodes", "generation", "writers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_EVICTED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    SAMPLEABLE_STARTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLEABLE_EPISODES_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    WRITERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    settings: BufferSettings
    transitions: int
    episodes: int
    ready: bool
    device: str
    bytes: int
    episodes_added: int
    episodes_evicted: int
    batches_sampled: int
    schema: _containers.RepeatedCompositeFieldContainer[FieldSpec]
    rate_limiter: RateLimiterStats
    sampleable_starts: int
    sampleable_episodes: int
    generation: int
    writers: _containers.RepeatedCompositeFieldContainer[WriterStats]
    def __init__(self, name: _Optional[str] = ..., settings: _Optional[_Union[BufferSettings, _Mapping]] = ..., transitions: _Optional[int] = ..., episodes: _Optional[int] = ..., ready: _Optional[bool] = ..., device: _Optional[str] = ..., bytes: _Optional[int] = ..., episodes_added: _Optional[int] = ..., episodes_evicted: _Optional[int] = ..., batches_sampled: _Optional[int] = ..., schema: _Optional[_Iterable[_Union[FieldSpec, _Mapping]]] = ..., rate_limiter: _Optional[_Union[RateLimiterStats, _Mapping]] = ..., sampleable_starts: _Optional[int] = ..., sampleable_episodes: _Optional[int] = ..., generation: _Optional[int] = ..., writers: _Optional[_Iterable[_Union[WriterStats, _Mapping]]] = ...) -> None: ...

class WriterStats(_message.Message):
    __slots__ = ("writer", "episodes", "episodes_added", "newest_index", "generation", "newest_policy_version", "oldest_policy_version", "latest_policy_version")
    WRITER_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    NEWEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NEWEST_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    OLDEST_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATEST_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    writer: str
    episodes: int
    episodes_added: int
    newest_index: int
    generation: int
    newest_policy_version: int
    oldest_policy_version: int
    latest_policy_version: int
    def __init__(self, writer: _Optional[str] = ..., episodes: _Optional[int] = ..., episodes_added: _Optional[int] = ..., newest_index: _Optional[int] = ..., generation: _Optional[int] = ..., newest_policy_version: _Optional[int] = ..., oldest_policy_version: _Optional[int] = ..., latest_policy_version: _Optional[int] = ...) -> None: ...

class Episode(_message.Message):
    __slots__ = ("fields",)
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.MessageMap[str, _tensor_pb2.Tensor]
    def __init__(self, fields: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("obs", "action", "reward", "done", "sequence_number", "sampleable_starts", "sampleable_episodes")
    OBS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    SAMPLEABLE_STARTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLEABLE_EPISODES_FIELD_NUMBER: _ClassVar[int]
    obs: _tensor_pb2.Tensor
    action: _tensor_pb2.Tensor
    reward: _tensor_pb2.Tensor
    done: _tensor_pb2.Tensor
    sequence_number: int
    sampleable_starts: int
    sampleable_episodes: int
    def __init__(self, obs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., action: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., reward: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., done: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., sequence_number: _Optional[int] = ..., sampleable_starts: _Optional[int] = ..., sampleable_episodes: _Optional[int] = ...) -> None: ...

class RoutingKey(_message.Message):
    __slots__ = ("seed", "writer", "index")
    SEED_FIELD_NUMBER: _ClassVar[int]
    WRITER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    seed: int
    writer: str
    index: int
    def __init__(self, seed: _Optional[int] = ..., writer: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class ListBuffersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBuffersResponse(_message.Message):
    __slots__ = ("buffers", "versions")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[BufferStats]
    versions: _containers.ScalarMap[str, str]
    def __init__(self, buffers: _Optional[_Iterable[_Union[BufferStats, _Mapping]]] = ..., versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CreateBufferRequest(_message.Message):
    __slots__ = ("buffer", "settings")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    settings: BufferSettings
    def __init__(self, buffer: _Optional[str] = ..., settings: _Optional[_Union[BufferSettings, _Mapping]] = ...) -> None: ...

class CreateBufferResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: BufferStats
    def __init__(self, stats: _Optional[_Union[BufferStats, _Mapping]] = ...) -> None: ...

class ResetBufferRequest(_message.Message):
    __slots__ = ("buffer", "settings")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    settings: BufferSettings
    def __init__(self, buffer: _Optional[str] = ..., settings: _Optional[_Union[BufferSettings, _Mapping]] = ...) -> None: ...

class ResetBufferResponse(_message.Message):
    __slots__ = ("stats", "episodes_dropped")
    STATS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    stats: BufferStats
    episodes_dropped: int
    def __init__(self, stats: _Optional[_Union[BufferStats, _Mapping]] = ..., episodes_dropped: _Optional[int] = ...) -> None: ...

class DeleteBufferRequest(_message.Message):
    __slots__ = ("buffer",)
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    def __init__(self, buffer: _Optional[str] = ...) -> None: ...

class DeleteBufferResponse(_message.Message):
    __slots__ = ("episodes_dropped",)
    EPISODES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    episodes_dropped: int
    def __init__(self, episodes_dropped: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("buffer",)
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    def __init__(self, buffer: _Optional[str] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: BufferStats
    def __init__(self, stats: _Optional[_Union[BufferStats, _Mapping]] = ...) -> None: ...

class AddEpisodeRequest(_message.Message):
    __slots__ = ("buffer", "episode", "routing", "generation", "policy_version")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    episode: Episode
    routing: RoutingKey
    generation: int
    policy_version: int
    def __init__(self, buffer: _Optional[str] = ..., episode: _Optional[_Union[Episode, _Mapping]] = ..., routing: _Optional[_Union[RoutingKey, _Mapping]] = ..., generation: _Optional[int] = ..., policy_version: _Optional[int] = ...) -> None: ...

class AddEpisodeResponse(_message.Message):
    __slots__ = ("num_episodes", "episode_id")
    NUM_EPISODES_FIELD_NUMBER: _ClassVar[int]
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    num_episodes: int
    episode_id: int
    def __init__(self, num_episodes: _Optional[int] = ..., episode_id: _Optional[int] = ...) -> None: ...

class LoadEpisodesRequest(_message.Message):
    __slots__ = ("buffer", "episodes", "routing", "generation", "policy_versions")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    episodes: _containers.RepeatedCompositeFieldContainer[Episode]
    routing: _containers.RepeatedCompositeFieldContainer[RoutingKey]
    generation: int
    policy_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, buffer: _Optional[str] = ..., episodes: _Optional[_Iterable[_Union[Episode, _Mapping]]] = ..., routing: _Optional[_Iterable[_Union[RoutingKey, _Mapping]]] = ..., generation: _Optional[int] = ..., policy_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class LoadEpisodesResponse(_message.Message):
    __slots__ = ("num_episodes", "episodes_loaded")
    NUM_EPISODES_FIELD_NUMBER: _ClassVar[int]
    EPISODES_LOADED_FIELD_NUMBER: _ClassVar[int]
    num_episodes: int
    episodes_loaded: int
    def __init__(self, num_episodes: _Optional[int] = ..., episodes_loaded: _Optional[int] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("buffer", "sequences")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    sequences: int
    def __init__(self, buffer: _Optional[str] = ..., sequences: _Optional[int] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class SampleStreamRequest(_message.Message):
    __slots__ = ("buffer", "prefetch", "num_batches")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    NUM_BATCHES_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    prefetch: int
    num_batches: int
    def __init__(self, buffer: _Optional[str] = ..., prefetch: _Optional[int] = ..., num_batches: _Optional[int] = ...) -> None: ...

class SampleStreamResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class SampleSequencesRequest(_message.Message):
    __slots__ = ("buffer", "sequences")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    sequences: int
    def __init__(self, buffer: _Optional[str] = ..., sequences: _Optional[int] = ...) -> None: ...

class SampleSequencesResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: Batch
    def __init__(self, batch: _Optional[_Union[Batch, _Mapping]] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("buffer", "chunk_bytes", "expect_episodes_added", "capture_id")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPECT_EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    chunk_bytes: int
    expect_episodes_added: int
    capture_id: str
    def __init__(self, buffer: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., expect_episodes_added: _Optional[int] = ..., capture_id: _Optional[str] = ...) -> None: ...

class CaptureRequest(_message.Message):
    __slots__ = ("buffer", "expect_episodes_added")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    EXPECT_EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    expect_episodes_added: int
    def __init__(self, buffer: _Optional[str] = ..., expect_episodes_added: _Optional[int] = ...) -> None: ...

class CaptureResponse(_message.Message):
    __slots__ = ("capture_id", "episodes_added", "batches_sampled", "transitions", "rate_limiter", "generation")
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    capture_id: str
    episodes_added: int
    batches_sampled: int
    transitions: int
    rate_limiter: RateLimiterStats
    generation: int
    def __init__(self, capture_id: _Optional[str] = ..., episodes_added: _Optional[int] = ..., batches_sampled: _Optional[int] = ..., transitions: _Optional[int] = ..., rate_limiter: _Optional[_Union[RateLimiterStats, _Mapping]] = ..., generation: _Optional[int] = ...) -> None: ...

class SnapshotResponse(_message.Message):
    __slots__ = ("chunk", "offset", "total_bytes", "episodes_added", "versions")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    offset: int
    total_bytes: int
    episodes_added: int
    versions: _containers.ScalarMap[str, str]
    def __init__(self, chunk: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., episodes_added: _Optional[int] = ..., versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SnapshotBlocksRequest(_message.Message):
    __slots__ = ("buffer", "chunk_bytes", "expect_episodes_added", "capture_id", "stored_blocks")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPECT_EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    chunk_bytes: int
    expect_episodes_added: int
    capture_id: str
    stored_blocks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, buffer: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., expect_episodes_added: _Optional[int] = ..., capture_id: _Optional[str] = ..., stored_blocks: _Optional[_Iterable[str]] = ...) -> None: ...

class BlockRef(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class BlockIndexStart(_message.Message):
    __slots__ = ("size", "blocks", "episodes_added", "versions")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    size: int
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    episodes_added: int
    versions: _containers.ScalarMap[str, str]
    def __init__(self, size: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ..., episodes_added: _Optional[int] = ..., versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class SnapshotBlocksResponse(_message.Message):
    __slots__ = ("block", "chunk", "index")
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    block: BlockRef
    chunk: bytes
    index: BlockIndexStart
    def __init__(self, block: _Optional[_Union[BlockRef, _Mapping]] = ..., chunk: _Optional[bytes] = ..., index: _Optional[_Union[BlockIndexStart, _Mapping]] = ...) -> None: ...

class BlockGrant(_message.Message):
    __slots__ = ("sha256", "url", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHA256_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    url: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, sha256: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BlockGrants(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[BlockGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[BlockGrant, _Mapping]]] = ...) -> None: ...

class UploadBlocksRequest(_message.Message):
    __slots__ = ("start", "grants")
    START_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    start: SnapshotBlocksRequest
    grants: BlockGrants
    def __init__(self, start: _Optional[_Union[SnapshotBlocksRequest, _Mapping]] = ..., grants: _Optional[_Union[BlockGrants, _Mapping]] = ...) -> None: ...

class BlocksNeeded(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockRef]
    def __init__(self, blocks: _Optional[_Iterable[_Union[BlockRef, _Mapping]]] = ...) -> None: ...

class UploadBlocksResponse(_message.Message):
    __slots__ = ("needed", "uploaded", "index", "chunk")
    NEEDED_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    needed: BlocksNeeded
    uploaded: BlockRef
    index: BlockIndexStart
    chunk: bytes
    def __init__(self, needed: _Optional[_Union[BlocksNeeded, _Mapping]] = ..., uploaded: _Optional[_Union[BlockRef, _Mapping]] = ..., index: _Optional[_Union[BlockIndexStart, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RestoreRequest(_message.Message):
    __slots__ = ("buffer", "chunk", "block", "fetch", "rate_limiter", "generation")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    BLOCK_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITER_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    chunk: bytes
    block: BlockRef
    fetch: BlockGrant
    rate_limiter: RateLimiterChange
    generation: int
    def __init__(self, buffer: _Optional[str] = ..., chunk: _Optional[bytes] = ..., block: _Optional[_Union[BlockRef, _Mapping]] = ..., fetch: _Optional[_Union[BlockGrant, _Mapping]] = ..., rate_limiter: _Optional[_Union[RateLimiterChange, _Mapping]] = ..., generation: _Optional[int] = ...) -> None: ...

class RestoreResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: BufferStats
    def __init__(self, stats: _Optional[_Union[BufferStats, _Mapping]] = ...) -> None: ...

class RateLimiterChange(_message.Message):
    __slots__ = ("settings", "paused")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    settings: BufferSettings
    paused: bool
    def __init__(self, settings: _Optional[_Union[BufferSettings, _Mapping]] = ..., paused: _Optional[bool] = ...) -> None: ...

class SetRateLimiterRequest(_message.Message):
    __slots__ = ("buffer", "change")
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    change: RateLimiterChange
    def __init__(self, buffer: _Optional[str] = ..., change: _Optional[_Union[RateLimiterChange, _Mapping]] = ...) -> None: ...

class SetRateLimiterResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: BufferStats
    def __init__(self, stats: _Optional[_Union[BufferStats, _Mapping]] = ...) -> None: ...
