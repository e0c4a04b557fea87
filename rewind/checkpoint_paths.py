"""How checkpoint paths look, for clients: `<store>/<agent_id>/<run_id>/step-<10 digits>[/<file>]`.

The checkpoint service's layout (rewind_checkpoint.layout) builds its keys
from these names; a client uses them to turn a path a user typed (relative,
absolute, a file inside the checkpoint) into a reference the service takes,
and to find the store a plain path lies in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

STEP_DIGITS = 10
_STEP_DIR = re.compile(rf"step-(\d{{{STEP_DIGITS}}})")
SELECTORS = ("latest", "best")


def step_dir(step: int) -> str:
    """The folder name of a step: step-0000005000."""
    return f"step-{step:0{STEP_DIGITS}d}"


def parse_step_dir(name: str) -> int | None:
    """The step a 'step-NNNNNNNNNN' folder name holds, or None for other names."""
    m = _STEP_DIR.fullmatch(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class LocalCheckpoint:
    """A checkpoint named by a path on this machine."""

    url: str        # file:///abs/<agent>/<run>/step-N: what the checkpoint service looks up
    store: str      # file:///abs: the store it lies in


def local_checkpoint(text: str, cwd: Path | None = None) -> LocalCheckpoint | None:
    """The checkpoint a filesystem path names (the step folder, or any file or folder inside it).

    A path is read as one on this machine when it is a file:// URL, is
    absolute, starts with ./ ../ or ~, or exists relative to `cwd`;
    `agent/run/step-N` that does not exist here stays a path inside the
    service's store, and other URLs (s3://) stay URLs.

    Returns:
        None when `text` is not a local path, or no step folder is on its way up.
    """
    if text.startswith("file://"):
        text = text.removeprefix("file://")
    elif "://" in text or text in SELECTORS:
        return None
    path = Path(text).expanduser()
    base = cwd or Path.cwd()
    local = path.is_absolute() or text.startswith(("./", "../", "~")) or (base / path).exists()
    if not local:
        return None
    absolute = Path(base, path).resolve()  # resolve: a symlink is judged by where it points
    for folder in (absolute, *absolute.parents):
        if parse_step_dir(folder.name) is not None and len(folder.parents) >= 3:
            return LocalCheckpoint(f"file://{folder}", f"file://{folder.parents[2]}")
    return None
