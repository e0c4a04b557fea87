"""How many CPU threads torch may use in a process.

torch starts one intra-op thread per core of the host, whatever share of the
host the process may actually use. Two trainings on a 2-core machine then run
four busy threads on two cores, and a container limited to 2 CPUs on a 64-core
node starts 64 threads that the CPU quota throttles. So the count comes from
what this process may use: its affinity mask (taskset, cpusets) and the cgroup
CPU quota of its own cgroup and every group above it (docker --cpus,
Kubernetes CPU limits).

    choice = configure_torch_threads(settings.torch_threads, "trainer")
    choice.threads, choice.reason      # 2, "detected: affinity mask of 2 CPUs; no cgroup CPU quota"
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rewind.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuBudget:
    """The CPUs a process may use, rounded down (at least 1), and why that many."""

    count: int
    reason: str


@dataclass(frozen=True)
class ThreadChoice:
    """The torch thread count a process chose, and why (shown in the trainer's status)."""

    threads: int
    reason: str


@dataclass(frozen=True)
class CgroupMount:
    """A mounted cgroup hierarchy that can limit CPU time (a line of /proc/self/mountinfo)."""

    version: int            # 1 (the v1 cpu controller) or 2 (the unified hierarchy)
    root: str               # the group of the hierarchy mounted there ("/" unless a container sees a subtree)
    point: PurePosixPath    # where it is mounted


@dataclass(frozen=True)
class Quota:
    """A cgroup CPU quota, in CPUs (1.5: one and a half CPUs' time per period)."""

    cpus: float
    where: str              # the group's folder, for the reason


def configure_torch_threads(requested: int, who: str) -> ThreadChoice:
    """Set torch's intra-op and inter-op thread counts for this process.

    Args:
        requested: threads to use; 0 uses the CPUs this process may use (`usable_cpus()`).
        who: the process, for the log line ("trainer", "buffer").

    Returns:
        The count set and why.

    Raises:
        InvalidArgument: `requested` is negative.
    """
    if requested < 0:
        raise InvalidArgument(f"torch_threads: must be 0 (detect) or a positive integer, got {requested}")
    if requested > 0:
        choice = ThreadChoice(requested, f"torch_threads {requested}, set explicitly")
    else:
        budget = usable_cpus()
        choice = ThreadChoice(budget.count, f"detected: {budget.reason}")
    import torch  # here, not at the top: the runtime does not load torch for services that do not use it

    torch.set_num_threads(choice.threads)
    try:
        torch.set_num_interop_threads(choice.threads)
    except RuntimeError as exc:
        # Only possible once, before any inter-op work (a second service in the same process, tests).
        log.debug("%s: torch inter-op threads stay at %d: %s", who, torch.get_num_interop_threads(), exc)
    log.info("%s: torch uses %d thread(s): %s", who, choice.threads, choice.reason)
    return choice


def usable_cpus(*, proc_root: Path | str = "/proc", fs_root: Path | str = "/",
                affinity: Collection[int] | None = None) -> CpuBudget:
    """The CPUs this process may use: min(affinity mask, cgroup CPU quota), rounded down, at least 1.

    Args:
        proc_root: where /proc is (tests point it at fake files).
        fs_root: prefixed to the cgroup mount points read from mountinfo (tests: a tmp folder).
        affinity: the CPUs of the affinity mask (default: `os.sched_getaffinity(0)`).
    """
    cpus = affinity_cpus() if affinity is None else set(affinity)
    mask = max(1, len(cpus))
    quota = cgroup_cpu_quota(Path(proc_root), Path(fs_root))
    mask_text = f"affinity mask of {_cpus(mask)}"
    if quota is None:
        return CpuBudget(mask, f"{mask_text}; no cgroup CPU quota")
    quota_text = f"cgroup CPU quota of {_cpus(quota.cpus)} at {quota.where}"
    if quota.cpus < mask:
        return CpuBudget(max(1, math.floor(quota.cpus)), f"{quota_text} ({mask_text})")
    return CpuBudget(mask, f"{mask_text} ({quota_text})")


def cpu_shares(cpus: Collection[int], parts: int) -> list[list[int]]:
    """Split a set of CPUs into `parts` contiguous, near-equal shares (runs of a sweep, one share each).

    With more parts than CPUs, the parts take the CPUs in turn (two runs may then share one).
    """
    ordered = sorted(cpus)
    if parts <= len(ordered):
        size, extra = divmod(len(ordered), parts)
        bounds = [i * size + min(i, extra) for i in range(parts + 1)]
        return [ordered[bounds[i]:bounds[i + 1]] for i in range(parts)]
    return [[ordered[i % len(ordered)]] for i in range(parts)]


def cgroup_cpu_quota(proc_root: Path = Path("/proc"), fs_root: Path = Path("/")) -> Quota | None:
    """The smallest CPU quota over this process's cgroups and their ancestors (None: no quota).

    Both the v1 cpu controller and the v2 unified hierarchy are read when both
    are mounted (hybrid hosts); missing or unreadable files mean no quota there.
    """
    groups = _own_groups(proc_root / "self" / "cgroup")
    smallest: Quota | None = None
    for mount in cgroup_mounts(proc_root / "self" / "mountinfo"):
        path = groups.get(mount.version)
        if path is None:
            continue
        for folder in _up_to_mount(mount, path):
            quota = _read_quota(mount.version, fs_root / folder.relative_to("/"), str(folder))
            if quota is not None and (smallest is None or quota.cpus < smallest.cpus):
                smallest = quota
    return smallest


def cgroup_mounts(mountinfo: Path = Path("/proc/self/mountinfo")) -> list[CgroupMount]:
    """The cgroup v1 cpu controller and cgroup v2 mounts listed in `mountinfo`."""
    mounts = []
    for line in _lines(mountinfo):
        # "36 25 0:31 <root> <mount point> <options> [optional fields...] - <fstype> <source> <super options>"
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point = _unescape(fields[3]), PurePosixPath(_unescape(fields[4]))
        if tail[0] == "cgroup2":
            mounts.append(CgroupMount(2, root, point))
        elif tail[0] == "cgroup" and "cpu" in tail[2].split(","):
            mounts.append(CgroupMount(1, root, point))
    return mounts


def _own_groups(cgroup_file: Path) -> dict[int, str]:
    """{1: the group in the v1 cpu hierarchy, 2: the group in the unified hierarchy} from /proc/self/cgroup."""
    groups: dict[int, str] = {}
    for line in _lines(cgroup_file):
        # "4:cpu,cpuacct:/docker/abc" (v1) or "0::/user.slice/x.scope" (v2)
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            groups[2] = path
        elif "cpu" in controllers.split(","):
            groups[1] = path
    return groups


def _up_to_mount(mount: CgroupMount, path: str) -> Iterator[PurePosixPath]:
    """The group's folder under the mount point, then each parent up to the mount point itself."""
    group, root = PurePosixPath(path), PurePosixPath(mount.root)
    if group == root or root in group.parents:
        inside = group.relative_to(root)
    else:
        inside = PurePosixPath()  # a group outside the mounted subtree: only the mount point's limit is visible
    folder = mount.point / inside
    yield folder
    for parent in folder.parents:
        if parent != mount.point and mount.point not in parent.parents:
            return
        yield parent


def _read_quota(version: int, folder: Path, where: str) -> Quota | None:
    try:
        if version == 2:
            # cpu.max: "<quota> <period>" in microseconds, or "max <period>" for none.
            quota_text, period_text = (folder / "cpu.max").read_text().split()[:2]
            if quota_text == "max":
                return None
            quota, period = int(quota_text), int(period_text)
        else:
            quota = int((folder / "cpu.cfs_quota_us").read_text())   # -1: none
            period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None  # not there (the root group, another layout) or unreadable: no limit known here
    if quota <= 0 or period <= 0:
        return None
    return Quota(quota / period, where)


def affinity_cpus() -> set[int]:
    """The CPUs of this process's affinity mask."""
    try:
        return os.sched_getaffinity(0)
    except AttributeError:  # not on Linux: no mask, every core
        return set(range(os.cpu_count() or 1))


def _cpus(n: float) -> str:
    return f"{n:g} CPU" if n == 1 else f"{n:g} CPUs"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
