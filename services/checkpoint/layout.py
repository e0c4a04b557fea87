"""Where checkpoints live in a store, and which names are allowed.

    <root>/<agent_id>/<run_id>/retention.json
    <root>/<agent_id>/<run_id>/history/status.json    (the trainer's heartbeat and state)
    <root>/<agent_id>/<run_id>/history/metrics.csv    (the trainer's metrics history)
    <root>/<agent_id>/<run_id>/step-0000001000/manifest.json   (written last)
    <root>/<agent_id>/<run_id>/step-0000001000/<files...>
    <root>/<agent_id>/<run_id>/blocks/<sha256>         (buffer blocks, shared by the run's checkpoints)

Every id and file name is checked before it becomes part of a key, so no
request can reach outside its run's prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rewind.checkpoint_paths import STEP_DIGITS, parse_step_dir, step_dir
from rewind.errors import InvalidArgument, RewindError
from rewind.names import MAX_FILE_NAME_CHARS, check_name
from rewind.run_history import RUN_FILES

MANIFEST = "manifest.json"
RETENTION = "retention.json"
MAX_STEP = 10**STEP_DIGITS - 1
# A run's history, which its trainer uploads (PutRunFile) with each checkpoint and
# every few seconds; the history pages and API read it. Only these names exist.
HISTORY_DIR = "history"
# Content-addressed buffer blocks, stored once per run and named by the sha256 of
# their bytes; a "blocks" checkpoint's manifest lists the ones it needs.
BLOCKS_DIR = "blocks"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def is_digest(value: str) -> bool:
    """Whether `value` is a sha256 as block names spell it: 64 lower-case hex digits."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def check_digest(value: str, field: str, error: type[RewindError] = InvalidArgument) -> str:
    """Validate a block's sha256 before it becomes part of a key.

    References come from manifests and buffer services, neither of which is
    trusted to keep a key inside its run's blocks/ folder.

    Args:
        value: the digest.
        field: where it came from, for the message.
        error: what a malformed one raises: InvalidArgument for a request,
            DataLoss for a stored manifest or a buffer service's stream.
    """
    if not is_digest(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise error(f"{field}: {shown!r} is not a sha256 (64 lower-case hex digits)")
    return value


def check_id(value: str, field: str) -> str:
    """Validate an agent id or run id (rewind.names' rule, which buffer names follow too).

    Raises:
        InvalidArgument: see rewind.names.check_name.
    """
    return check_name(value, field)


def check_file_name(name: str, field: str = "file") -> str:
    """Validate a checkpoint file name; manifest.json is reserved."""
    check_name(name, field, max_chars=MAX_FILE_NAME_CHARS)
    if name in (MANIFEST, RETENTION):
        raise InvalidArgument(f"{field}: {name!r} is reserved for the service")
    return name


def check_step(step: int, field: str = "step") -> int:
    if not 0 <= step <= MAX_STEP:
        raise InvalidArgument(f"{field}: {step} is outside 0..{MAX_STEP}")
    return step


@dataclass(frozen=True, order=True)
class RunKey:
    """An agent's run: the unit of listing and retention."""

    agent_id: str
    run_id: str

    @classmethod
    def checked(cls, agent_id: str, run_id: str) -> RunKey:
        return cls(check_id(agent_id, "agent_id"), check_id(run_id, "run_id"))

    @property
    def prefix(self) -> str:
        return f"{self.agent_id}/{self.run_id}/"

    @property
    def retention_key(self) -> str:
        return f"{self.prefix}{RETENTION}"

    @property
    def blocks_prefix(self) -> str:
        return f"{self.prefix}{BLOCKS_DIR}/"

    def block_key(self, sha256: str) -> str:
        """The key of one of the run's blocks (the digest is checked: InvalidArgument otherwise)."""
        return f"{self.blocks_prefix}{check_digest(sha256, 'block')}"

    def history_key(self, name: str) -> str:
        """The key of one of the run's history files (RUN_FILES)."""
        if name not in RUN_FILES:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise InvalidArgument(f"name: {shown!r} is not a run file; expected one of {', '.join(RUN_FILES)}")
        return f"{self.prefix}{HISTORY_DIR}/{name}"

    def __str__(self) -> str:
        return f"{self.agent_id}/{self.run_id}"


@dataclass(frozen=True, order=True)
class CheckpointKey:
    """One checkpoint: a run and a step."""

    run: RunKey
    step: int

    @classmethod
    def checked(cls, agent_id: str, run_id: str, step: int) -> CheckpointKey:
        return cls(RunKey.checked(agent_id, run_id), check_step(step))

    @property
    def prefix(self) -> str:
        return f"{self.run.prefix}{step_dir(self.step)}/"

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}{MANIFEST}"

    def file_key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def __str__(self) -> str:
        return f"{self.run}/{step_dir(self.step)}"


def parse_path(path: str, store_url: str) -> CheckpointKey:
    """A checkpoint path (as in Checkpoint.path, or agent/run/step-N) -> its key.

    Raises:
        InvalidArgument: the path is outside this store or is not a checkpoint path.
    """
    return split_path(path, store_url)[0]


def split_path(path: str, store_url: str) -> tuple[CheckpointKey, str]:
    """A checkpoint path, or the path of a file inside one -> (its key, the file's name or "").

    Raises:
        InvalidArgument: the path is outside this store or is not a checkpoint path.
    """
    rel = path.strip()
    if "://" in rel:
        root = store_url.rstrip("/") + "/"
        if not rel.startswith(root):
            raise InvalidArgument(f"path: {path!r} is not in this service's store {store_url}")
        rel = rel[len(root):]
    parts = rel.strip("/").split("/")
    file = ""
    if len(parts) == 4 and parse_step_dir(parts[2]) is not None:
        parts, file = parts[:3], parts[3]  # a file inside the checkpoint names the checkpoint
    if len(parts) != 3:
        raise InvalidArgument(f"path: {path!r} is not a checkpoint path; expected <agent_id>/<run_id>/step-<N> "
                              f"or a full path under {store_url}")
    agent_id, run_id, step_name = parts
    step = parse_step_dir(step_name)
    if step is None:
        if step_name.isdigit():
            step = int(step_name)
        else:
            raise InvalidArgument(f"path: {step_name!r} in {path!r} is not a step directory (step-{'0' * 9}1)")
    return CheckpointKey.checked(agent_id, run_id, step), file
