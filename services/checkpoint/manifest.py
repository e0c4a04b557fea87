"""manifest.json: what a committed checkpoint holds, as JSON and as proto.

The manifest is the commit record. It is written after every file it lists,
so its presence means the checkpoint is complete.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from google.protobuf import json_format, struct_pb2

from rewind.checkpoint.v1 import checkpoint_pb2
from rewind.errors import DataLoss
from rewind.run_history import now_rfc3339  # noqa: F401  (the store's one timestamp format; upload.py's `created`)
from rewind.versions import CHECKPOINT_FORMAT
from rewind_checkpoint.layout import CheckpointKey, RunKey, check_digest

FORMAT = CHECKPOINT_FORMAT
# How a buffer is saved: "blob", the whole snapshot in its file; "blocks", the file is an
# index and the rows live in the run's shared blocks/<sha256> (BufferEntry.blocks).
BUFFER_FORMATS = ("blob", "blocks")


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BlockInfo:
    """One block a "blocks" snapshot needs: <agent>/<run>/blocks/<sha256>, `size` bytes."""

    sha256: str
    size: int


@dataclass(frozen=True)
class BufferEntry:
    buffer: str
    file: str
    address: str
    episodes_added: int
    # The buffer service's versions and snapshot_format (empty in older manifests).
    versions: dict[str, str] = field(default_factory=dict)
    format: str = "blob"  # older manifests have none: a whole snapshot
    # The blocks a "blocks" snapshot needs, in the order a restore sends them. Kept here as well as
    # in the index file, so that verification and GC never open index files.
    blocks: tuple[BlockInfo, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint's record (manifest.json)."""

    agent_id: str
    run_id: str
    step: int
    episode: int
    created: str
    files: tuple[FileEntry, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    resumed_from: str = ""
    buffers: tuple[BufferEntry, ...] = ()
    # The saving process's versions and checkpoint_format (empty in older manifests).
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> CheckpointKey:
        return CheckpointKey(RunKey(self.agent_id, self.run_id), self.step)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, name: str) -> FileEntry | None:
        return next((f for f in self.files if f.name == name), None)

    @property
    def blocks(self) -> dict[str, int]:
        """Every block the checkpoint needs (sha256 -> size), each once, in first-use order."""
        return {b.sha256: b.size for entry in self.buffers for b in entry.blocks}

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **asdict(self), "total_bytes": self.total_bytes}
        return json.dumps(body, indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parse manifest.json.

        Raises:
            DataLoss: the manifest is not valid JSON or misses fields.
        """
        try:
            body = json.loads(data)
            if body.get("format") != FORMAT:
                raise ValueError(f"format {body.get('format')!r}")
            return cls(
                agent_id=body["agent_id"],
                run_id=body["run_id"],
                step=int(body["step"]),
                episode=int(body["episode"]),
                created=body["created"],
                files=tuple(FileEntry(f["name"], int(f["size"]), f["sha256"]) for f in body["files"]),
                metrics={k: float(v) for k, v in body.get("metrics", {}).items()},
                config=body.get("config", {}),
                extra=body.get("extra", {}),
                resumed_from=body.get("resumed_from", ""),
                buffers=tuple(_buffer_entry(b, f"buffers[{i}]") for i, b in enumerate(body.get("buffers", []))),
                versions=_versions(body.get("versions", {})),
            )
        except (ValueError, KeyError, TypeError, DataLoss) as exc:
            raise DataLoss(f"{where}: manifest.json is unreadable ({type(exc).__name__}: {exc})") from None

    def to_proto(self, path: str) -> checkpoint_pb2.Checkpoint:
        msg = checkpoint_pb2.Checkpoint(
            agent_id=self.agent_id, run_id=self.run_id, step=self.step, episode=self.episode, path=path,
            created=self.created, total_bytes=self.total_bytes, resumed_from=self.resumed_from,
            files=[checkpoint_pb2.FileInfo(name=f.name, size=f.size, sha256=f.sha256) for f in self.files],
            buffers=[checkpoint_pb2.BufferFile(
                buffer=b.buffer, file=b.file, address=b.address, episodes_added=b.episodes_added,
                versions=b.versions, format=b.format,
                blocks=[checkpoint_pb2.BlockInfo(sha256=x.sha256, size=x.size) for x in b.blocks])
                     for b in self.buffers],
            versions=self.versions,
        )
        msg.metrics.update(self.metrics)
        msg.config.update(self.config)
        msg.extra.update(self.extra)
        return msg


def _buffer_entry(b: dict[str, Any], where: str) -> BufferEntry:
    """One entry of manifest.json's buffers, field by field.

    Never BufferEntry(**b): a key this release does not know (a newer writer's) must be
    ignored, not become a TypeError that makes the manifest unreadable (GC stops at an
    unreadable manifest; a reader that skipped it would see its blocks as unused).

    Raises:
        ValueError: a format this release cannot read, or a malformed block reference.
        DataLoss: a block digest that is not one (naming the field).
    """
    if not isinstance(b, dict):
        raise TypeError(f"{where}: is {type(b).__name__}, not an object")
    fmt = b.get("format", "blob")
    if fmt not in BUFFER_FORMATS:
        raise ValueError(f"{where}.format: {fmt!r} is not one of {', '.join(BUFFER_FORMATS)}")
    blocks = []
    for j, x in enumerate(b.get("blocks", [])):
        size = int(x["size"])
        if size < 0:
            raise ValueError(f"{where}.blocks[{j}].size: {size} is negative")
        blocks.append(BlockInfo(check_digest(x["sha256"], f"{where}.blocks[{j}].sha256", DataLoss), size))
    return BufferEntry(buffer=b["buffer"], file=b["file"], address=b["address"],
                       episodes_added=int(b["episodes_added"]), versions=_versions(b.get("versions", {})),
                       format=fmt, blocks=tuple(blocks))


def _versions(value: Any) -> dict[str, str]:
    """A version record read from manifest.json: its string entries.

    Lenient on purpose: a malformed record must not make the whole manifest
    unreadable (an unreadable manifest is skipped, and what it references
    looks unused); what is left out reads as an unrecorded version.
    """
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(message)
