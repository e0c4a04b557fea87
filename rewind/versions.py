"""Version records: what wrote a checkpoint, and whether this process can resume it.

Every manifest records the versions of the trainer that saved it (top level)
and of the buffer service each snapshot came from (per buffer). A resume
compares them with the processes that will read them, before anything is
written; `compare` holds every rule, so that the table can be tuned in one place.

This module imports nothing heavy: versions are read from the installed
packages' metadata, never by importing them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import re
from collections.abc import Mapping

# The packages whose versions are recorded, in the order they are shown.
PACKAGES = ("torch", "tensordict", "torchrl", "rewind")
# The formats: of the checkpoint (its manifest.json) and of a buffer snapshot.
CHECKPOINT_FORMAT = "rewind.checkpoint/1"
# Buffer snapshot format_versions this release reads (1: the whole blob; 2: the block index of
# an incremental checkpoint, whose rows are in content-addressed blocks).
SNAPSHOT_FORMATS = frozenset({1, 2})
# The keys of a process's versions (what current() returns, and a SaveHeader may carry).
PROCESS_KEYS = ("python", *PACKAGES)
# Every key a version record may hold.
KEYS = (*PROCESS_KEYS, "checkpoint_format", "snapshot_format")
MAX_VALUE_CHARS = 64
# Recorded for a package that is not installed.
ABSENT = "absent"

_RELEASE = re.compile(r"(\d+)(?:\.(\d+))?")


def current() -> dict[str, str]:
    """This process's python and package versions (without importing the packages).

    The formats are added by whoever writes them: the checkpoint service adds
    `checkpoint_format`, the buffer service `snapshot_format`.
    """
    return dict(_installed())


@functools.cache
def _installed() -> tuple[tuple[str, str], ...]:
    """Read once: a process's packages do not change while it runs (and each read scans sys.path)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = ABSENT
    return tuple(found.items())


def check(versions: Mapping[str, str], field: str, keys: tuple[str, ...] = KEYS) -> dict[str, str]:
    """A version record from a request, checked; returns it as a dict.

    Raises:
        ValueError: a key outside `keys`, or a value that is empty, longer
            than MAX_VALUE_CHARS or not printable, naming `field` and the key.
    """
    for key, value in versions.items():
        if key not in keys:
            raise ValueError(f"{field}: unknown key {key!r:.80}; the keys are {', '.join(keys)}")
        if not (0 < len(value) <= MAX_VALUE_CHARS and value.isprintable()):
            raise ValueError(f"{field}[{key!r}]: {value!r:.80} must be 1 to {MAX_VALUE_CHARS} printable characters")
    return dict(versions)


def describe(versions: Mapping[str, str]) -> str:
    """'torch 2.13.0, torchrl 0.14.1, ...' in KEYS order (empty: 'no version record')."""
    shown = [f"{key} {versions[key]}" for key in KEYS if key in versions]
    return ", ".join(shown) if shown else "no version record"


def compare(recorded: Mapping[str, str], running: Mapping[str, str],
            running_name: str = "this process") -> tuple[list[str], list[str]]:
    """Compare a version record with the versions of the process that will read it.

    Args:
        recorded: the versions stored in a manifest (empty for checkpoints
            written before Rewind recorded them).
        running: the reader's versions (current(), plus the formats it reads:
            `checkpoint_format` as CHECKPOINT_FORMAT, `snapshot_format` as the
            newest snapshot format it reads).
        running_name: how the reader is named in the messages ("this trainer",
            "the buffer service at host:port").

    Returns:
        (incompatible, different): one message per version that makes the
        resume impossible, and one per compatible difference (to be logged).

    The rules:
        incompatible: torch's major release differs; torchrl's or tensordict's
            minor release differs (their samplers' state would not restore
            exactly); the record names a newer Rewind (major.minor) than the
            reader's; a checkpoint format other than the reader's; a snapshot
            format that this release or the reader does not read (an older
            one it reads is not even logged).
        compatible, logged: python differs; patch (or local) releases differ;
            an older Rewind; a package absent on one side or a version that
            does not parse; a missing record (old checkpoints) or a reader
            that reports no versions.
    """
    if not recorded:
        return [], ["no version record (written before Rewind recorded versions)"]
    if not running:
        return [], [f"{running_name} reports no versions (recorded: {describe(recorded)})"]
    incompatible: list[str] = []
    different: list[str] = []
    for key in KEYS:
        old, new = recorded.get(key), running.get(key)
        if old is None or old == new:
            continue
        if new is None:
            if key != "snapshot_format":
                different.append(f"{key} {old}, {running_name} does not report its {key}")
                continue
        verdict = _rule(key, old, new)
        verb = "reads" if key.endswith("_format") else "runs"
        message = f"{key} {old}, {running_name} {verb} {new}" if new is not None else f"{key} {old}"
        if verdict is None:
            if key != "snapshot_format":  # an older format the reader restores is no difference worth a line
                different.append(message)
        else:
            incompatible.append(f"{message} ({verdict})")
    return incompatible, different


def _rule(key: str, old: str, new: str | None) -> str | None:
    """Why `old` (recorded) cannot be read where `new` runs, or None when it can."""
    if key == "checkpoint_format":
        return "another checkpoint format; install the Rewind that wrote it or start a new run"
    if key == "snapshot_format":
        return _snapshot_rule(old, new)
    if ABSENT in (old, new):
        return None
    old_release, new_release = _release(old), _release(new)
    if old_release is None or new_release is None:
        return None
    if key == "torch" and old_release[0] != new_release[0]:
        return (f"another major release may not load its tensors and trainer.pt; install torch {old_release[0]}.x "
                "or start a new run")
    if key in ("torchrl", "tensordict") and old_release != new_release:
        return (f"another minor release cannot restore its sampler state exactly; install {key} "
                f"{old_release[0]}.{old_release[1]}.x or start a new run")
    if key == "rewind" and old_release > new_release:
        return f"written by a newer Rewind; install rewind {old_release[0]}.{old_release[1]} or later"
    return None


def _snapshot_rule(old: str, new: str | None) -> str | None:
    try:
        fmt = int(old)
    except ValueError:
        fmt = None
    if fmt not in SNAPSHOT_FORMATS:
        return (f"this Rewind reads snapshot formats {', '.join(map(str, sorted(SNAPSHOT_FORMATS)))} only; "
                "install the Rewind that wrote it or start a new run")
    try:
        newest = int(new) if new is not None else None
    except ValueError:
        newest = None
    if newest is not None and fmt > newest:
        return "a newer snapshot format than it restores; upgrade it to this Rewind or start a new run"
    return None


def _release(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string ('2.13.0+cpu' -> (2, 13)); None when it does not start with a number."""
    match = _RELEASE.match(version)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)
