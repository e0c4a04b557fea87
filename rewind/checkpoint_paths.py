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
class CheckpointLocation:
    """A checkpoint named by a path on this machine or a store URL, and the store it lies in."""

    url: str        # file:///abs/<agent>/<run>/step-N[/file] or s3://...: what the service looks up
    store: str      # file:///abs or s3://bucket/prefix: the store it lies in


def is_local_path(text: str, cwd: Path | None = None) -> bool:
    """Whether `text` is read as a path on this machine rather than a name inside a service's store.

    Names inside a store are `latest`, `best`, other URLs (s3://) and
    `<agent>/<run>/step-N[/<file>]` (or `<agent>/<run>/N`) that does not exist
    here; everything else is a path here, relative to `cwd` unless absolute.
    """
    if text.startswith("file://"):
        return True
    if "://" in text or text in SELECTORS or not text:
        return False
    path = Path(text).expanduser()
    if path.is_absolute() or text.startswith(("./", "../", "~")) or ((cwd or Path.cwd()) / path).exists():
        return True
    parts = text.strip("/").split("/")
    in_store = len(parts) in (3, 4) and (parse_step_dir(parts[2]) is not None or parts[2].isdigit())
    return not in_store


def locate_checkpoint(text: str, cwd: Path | None = None) -> CheckpointLocation | None:
    """The checkpoint a path or URL names (the step folder, or any file or folder inside it), and its store.

    Returns:
        None when `text` is a name inside a service's store (latest, best,
        agent/run/step-N) or has no step folder on its way up, or its store would
        be above the root.
    """
    if "://" in text and not text.startswith("file://"):
        return _locate_url(text)
    if not is_local_path(text, cwd):
        return None
    path = Path(text.removeprefix("file://")).expanduser()
    absolute = Path(cwd or Path.cwd(), path).resolve()  # resolve: a symlink is judged by where it points
    for depth, folder in enumerate((absolute, *absolute.parents)):
        if parse_step_dir(folder.name) is not None and len(folder.parents) >= 3:
            named = absolute if depth <= 1 else folder  # keep a file's name: the service checks it is there
            return CheckpointLocation(f"file://{named}", f"file://{folder.parents[2]}")
    return None


def _locate_url(text: str) -> CheckpointLocation | None:
    """s3://bucket/prefix/<agent>/<run>/step-N[/file]: the store is everything before <agent>."""
    scheme, _, rest = text.partition("://")
    parts = rest.strip("/").split("/")
    steps = [i for i, part in enumerate(parts) if parse_step_dir(part) is not None and i >= 3]
    if not steps:
        return None
    i = steps[-1]
    named = parts[:i + 2]  # the step folder, and a file inside it
    return CheckpointLocation(f"{scheme}://{'/'.join(named)}", f"{scheme}://{'/'.join(parts[:i - 2])}")
