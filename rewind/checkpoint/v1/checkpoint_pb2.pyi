from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointRef(_message.Message):
    __slots__ = ("agent_id", "run_id", "step", "path")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    step: int
    path: str
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., step: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class FileInfo(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class BufferFile(_message.Message):
    __slots__ = ("buffer", "file", "address", "episodes_added", "versions", "format", "blocks")
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    buffer: str
    file: str
    address: str
    episodes_added: int
    versions: _containers.ScalarMap[str, str]
    format: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockInfo]
    def __init__(self, buffer: _Optional[str] = ..., file: _Optional[str] = ..., address: _Optional[str] = ..., episodes_added: _Optional[int] = ..., versions: _Optional[_Mapping[str, str]] = ..., format: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockInfo, _Mapping]]] = ...) -> None: ...

class BlockInfo(_message.Message):
    __slots__ = ("sha256", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("agent_id", "run_id", "step", "episode", "path", "created", "files", "total_bytes", "metrics", "config", "extra", "resumed_from", "buffers", "versions")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    step: int
    episode: int
    path: str
    created: str
    files: _containers.RepeatedCompositeFieldContainer[FileInfo]
    total_bytes: int
    metrics: _containers.ScalarMap[str, float]
    config: _struct_pb2.Struct
    extra: _struct_pb2.Struct
    resumed_from: str
    buffers: _containers.RepeatedCompositeFieldContainer[BufferFile]
    versions: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., step: _Optional[int] = ..., episode: _Optional[int] = ..., path: _Optional[str] = ..., created: _Optional[str] = ..., files: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ..., total_bytes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resumed_from: _Optional[str] = ..., buffers: _Optional[_Iterable[_Union[BufferFile, _Mapping]]] = ..., versions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RetentionPolicy(_message.Message):
    __slots__ = ("keep_last", "keep_every", "keep_best", "metric", "mode")
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    KEEP_EVERY_FIELD_NUMBER: _ClassVar[int]
    KEEP_BEST_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    keep_last: int
    keep_every: int
    keep_best: int
    metric: str
    mode: str
    def __init__(self, keep_last: _Optional[int] = ..., keep_every: _Optional[int] = ..., keep_best: _Optional[int] = ..., metric: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class BufferSource(_message.Message):
    __slots__ = ("address", "buffer", "file", "expect_episodes_added", "capture_id", "blocks")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    EXPECT_EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    address: str
    buffer: str
    file: str
    expect_episodes_added: int
    capture_id: str
    blocks: bool
    def __init__(self, address: _Optional[str] = ..., buffer: _Optional[str] = ..., file: _Optional[str] = ..., expect_episodes_added: _Optional[int] = ..., capture_id: _Optional[str] = ..., blocks: _Optional[bool] = ...) -> None: ...

class FileAnnouncement(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class SaveHeader(_message.Message):
    __slots__ = ("agent_id", "run_id", "step", "episode", "files", "buffers", "metrics", "config", "extra", "resumed_from", "retention", "versions", "store_endpoints")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    STORE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    step: int
    episode: int
    files: _containers.RepeatedCompositeFieldContainer[FileAnnouncement]
    buffers: _containers.RepeatedCompositeFieldContainer[BufferSource]
    metrics: _containers.ScalarMap[str, float]
    config: _struct_pb2.Struct
    extra: _struct_pb2.Struct
    resumed_from: str
    retention: RetentionPolicy
    versions: _containers.ScalarMap[str, str]
    store_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., step: _Optional[int] = ..., episode: _Optional[int] = ..., files: _Optional[_Iterable[_Union[FileAnnouncement, _Mapping]]] = ..., buffers: _Optional[_Iterable[_Union[BufferSource, _Mapping]]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., config: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resumed_from: _Optional[str] = ..., retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ..., versions: _Optional[_Mapping[str, str]] = ..., store_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class FileChunk(_message.Message):
    __slots__ = ("file", "data")
    FILE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    file: str
    data: bytes
    def __init__(self, file: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class Commit(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[FileInfo]
    def __init__(self, files: _Optional[_Iterable[_Union[FileInfo, _Mapping]]] = ...) -> None: ...

class SaveRequest(_message.Message):
    __slots__ = ("header", "chunk", "commit")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    header: SaveHeader
    chunk: FileChunk
    commit: Commit
    def __init__(self, header: _Optional[_Union[SaveHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ...) -> None: ...

class FileGrant(_message.Message):
    __slots__ = ("name", "url", "headers")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    headers: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FileGrants(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[FileGrant]
    def __init__(self, grants: _Optional[_Iterable[_Union[FileGrant, _Mapping]]] = ...) -> None: ...

class SaveDirectRequest(_message.Message):
    __slots__ = ("header", "chunk", "commit")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    header: SaveHeader
    chunk: FileChunk
    commit: Commit
    def __init__(self, header: _Optional[_Union[SaveHeader, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ...) -> None: ...

class SaveDirectResponse(_message.Message):
    __slots__ = ("grants", "done")
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    grants: FileGrants
    done: SaveResponse
    def __init__(self, grants: _Optional[_Union[FileGrants, _Mapping]] = ..., done: _Optional[_Union[SaveResponse, _Mapping]] = ...) -> None: ...

class SaveResponse(_message.Message):
    __slots__ = ("checkpoint", "deleted", "uploaded_bytes", "deduplicated_bytes")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    UPLOADED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_BYTES_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    deleted: _containers.RepeatedScalarFieldContainer[str]
    uploaded_bytes: int
    deduplicated_bytes: int
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., deleted: _Optional[_Iterable[str]] = ..., uploaded_bytes: _Optional[int] = ..., deduplicated_bytes: _Optional[int] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("ref", "file", "chunk_bytes", "store_endpoints")
    REF_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORE_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    ref: CheckpointRef
    file: str
    chunk_bytes: int
    store_endpoints: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ref: _Optional[_Union[CheckpointRef, _Mapping]] = ..., file: _Optional[str] = ..., chunk_bytes: _Optional[int] = ..., store_endpoints: _Optional[_Iterable[str]] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("checkpoint", "chunk", "grant")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    GRANT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    chunk: FileChunk
    grant: FileGrant
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., chunk: _Optional[_Union[FileChunk, _Mapping]] = ..., grant: _Optional[_Union[FileGrant, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("agent_id", "run_id", "checkpoints", "latest_step", "latest_created", "total_bytes")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    LATEST_STEP_FIELD_NUMBER: _ClassVar[int]
    LATEST_CREATED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    checkpoints: int
    latest_step: int
    latest_created: str
    total_bytes: int
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., checkpoints: _Optional[int] = ..., latest_step: _Optional[int] = ..., latest_created: _Optional[str] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("agent_id", "run_id")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ...) -> None: ...

class BestSelector(_message.Message):
    __slots__ = ("metric", "mode")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    metric: str
    mode: str
    def __init__(self, metric: _Optional[str] = ..., mode: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("agent_id", "run_id", "latest", "best", "step", "path", "skip_verify", "fall_back")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SKIP_VERIFY_FIELD_NUMBER: _ClassVar[int]
    FALL_BACK_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    latest: bool
    best: BestSelector
    step: int
    path: str
    skip_verify: bool
    fall_back: bool
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., latest: _Optional[bool] = ..., best: _Optional[_Union[BestSelector, _Mapping]] = ..., step: _Optional[int] = ..., path: _Optional[str] = ..., skip_verify: _Optional[bool] = ..., fall_back: _Optional[bool] = ...) -> None: ...

class Skipped(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("checkpoint", "skipped")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    skipped: _containers.RepeatedCompositeFieldContainer[Skipped]
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., skipped: _Optional[_Iterable[_Union[Skipped, _Mapping]]] = ...) -> None: ...

class BufferTarget(_message.Message):
    __slots__ = ("address", "buffer", "file")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    address: str
    buffer: str
    file: str
    def __init__(self, address: _Optional[str] = ..., buffer: _Optional[str] = ..., file: _Optional[str] = ...) -> None: ...

class RestoreBuffersRequest(_message.Message):
    __slots__ = ("ref", "targets", "generation")
    REF_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ref: CheckpointRef
    targets: _containers.RepeatedCompositeFieldContainer[BufferTarget]
    generation: int
    def __init__(self, ref: _Optional[_Union[CheckpointRef, _Mapping]] = ..., targets: _Optional[_Iterable[_Union[BufferTarget, _Mapping]]] = ..., generation: _Optional[int] = ...) -> None: ...

class RestoredBuffer(_message.Message):
    __slots__ = ("address", "buffer", "file", "episodes", "transitions", "episodes_added")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    TRANSITIONS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ADDED_FIELD_NUMBER: _ClassVar[int]
    address: str
    buffer: str
    file: str
    episodes: int
    transitions: int
    episodes_added: int
    def __init__(self, address: _Optional[str] = ..., buffer: _Optional[str] = ..., file: _Optional[str] = ..., episodes: _Optional[int] = ..., transitions: _Optional[int] = ..., episodes_added: _Optional[int] = ...) -> None: ...

class RestoreBuffersResponse(_message.Message):
    __slots__ = ("buffers",)
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[RestoredBuffer]
    def __init__(self, buffers: _Optional[_Iterable[_Union[RestoredBuffer, _Mapping]]] = ...) -> None: ...

class DeleteCheckpointRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: CheckpointRef
    def __init__(self, ref: _Optional[_Union[CheckpointRef, _Mapping]] = ...) -> None: ...

class DeleteCheckpointResponse(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class GetRetentionRequest(_message.Message):
    __slots__ = ("agent_id", "run_id")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class GetRetentionResponse(_message.Message):
    __slots__ = ("retention",)
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    retention: RetentionPolicy
    def __init__(self, retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class SetRetentionRequest(_message.Message):
    __slots__ = ("agent_id", "run_id", "retention")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    retention: RetentionPolicy
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class SetRetentionResponse(_message.Message):
    __slots__ = ("retention",)
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    retention: RetentionPolicy
    def __init__(self, retention: _Optional[_Union[RetentionPolicy, _Mapping]] = ...) -> None: ...

class PutRunFileRequest(_message.Message):
    __slots__ = ("agent_id", "run_id", "name", "content")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    name: str
    content: bytes
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class PutRunFileResponse(_message.Message):
    __slots__ = ("path", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class GetRunFileRequest(_message.Message):
    __slots__ = ("agent_id", "run_id", "name")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    run_id: str
    name: str
    def __init__(self, agent_id: _Optional[str] = ..., run_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class GetRunFileResponse(_message.Message):
    __slots__ = ("content", "modified")
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_FIELD_NUMBER: _ClassVar[int]
    content: bytes
    modified: str
    def __init__(self, content: _Optional[bytes] = ..., modified: _Optional[str] = ...) -> None: ...
