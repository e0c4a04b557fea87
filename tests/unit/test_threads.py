"""usable_cpus() against fake /proc and cgroup files, and configure_torch_threads()."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from rewind.errors import InvalidArgument
from rewind_runtime import threads
from rewind_runtime.threads import CpuBudget, configure_torch_threads, usable_cpus

# mountinfo lines as a cgroup v1 host (cpu and cpuacct mounted together), a cgroup v2 host and this
# repository's hybrid test machine list them.
V1_CPU = "33 25 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
V1_MEMORY = "35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory\n"
V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID = ("32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
          "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
EIGHT = range(8)


def host(tmp_path: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> dict:
    """Fake /proc/self/{cgroup,mountinfo} and cgroup files under tmp_path; usable_cpus()'s path arguments."""
    own = tmp_path / "proc" / "self"
    own.mkdir(parents=True)
    (own / "cgroup").write_text(cgroup)
    (own / "mountinfo").write_text(mountinfo)
    for path, text in files.items():
        file = tmp_path / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(text + "\n")
    return {"proc_root": tmp_path / "proc", "fs_root": tmp_path}


def v1_quota(folder: str, quota_us: int, period_us: int = 100_000) -> dict[str, str]:
    return {f"{folder}/cpu.cfs_quota_us": str(quota_us), f"{folder}/cpu.cfs_period_us": str(period_us)}


# -- cgroup v1 -------------------------------------------------------------------

def test_a_v1_quota_limits_the_cpus(tmp_path):
    paths = host(tmp_path, "5:memory:/job\n4:cpu,cpuacct:/job\n", V1_MEMORY + V1_CPU,
                 v1_quota("/sys/fs/cgroup/cpu,cpuacct/job", 200_000))
    budget = usable_cpus(affinity=EIGHT, **paths)
    assert budget.count == 2
    assert "cgroup CPU quota of 2 CPUs at /sys/fs/cgroup/cpu,cpuacct/job" in budget.reason
    assert "affinity mask of 8 CPUs" in budget.reason


def test_a_v1_quota_of_minus_one_is_no_limit(tmp_path):
    paths = host(tmp_path, "4:cpu,cpuacct:/job\n", V1_CPU, v1_quota("/sys/fs/cgroup/cpu,cpuacct/job", -1))
    assert usable_cpus(affinity=EIGHT, **paths) == CpuBudget(8, "affinity mask of 8 CPUs; no cgroup CPU quota")


def test_v1_nested_groups_the_smallest_quota_wins(tmp_path):
    mount = "/sys/fs/cgroup/cpu,cpuacct"
    paths = host(tmp_path, "4:cpu,cpuacct:/team/job/step\n", V1_CPU,
                 {**v1_quota(f"{mount}/team", 300_000), **v1_quota(f"{mount}/team/job", 50_000, 20_000),
                  **v1_quota(f"{mount}/team/job/step", -1), **v1_quota(mount, -1)})
    budget = usable_cpus(affinity=EIGHT, **paths)
    assert budget.count == 2  # 50 ms per 20 ms is 2.5 CPUs, under the team's 3
    assert f"2.5 CPUs at {mount}/team/job " in budget.reason


def test_a_container_that_sees_its_own_group_as_the_mount_root(tmp_path):
    # Docker without a cgroup namespace: the mount's root and the process's group are the same folder.
    mountinfo = "40 31 0:29 /docker/abc /sys/fs/cgroup/cpu ro,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    paths = host(tmp_path, "4:cpu,cpuacct:/docker/abc\n", mountinfo, v1_quota("/sys/fs/cgroup/cpu", 150_000))
    assert usable_cpus(affinity=EIGHT, **paths).count == 1


def test_a_hybrid_host_reads_the_v1_cpu_controller(tmp_path):
    cgroup = "4:memory:/x\n1:cpu:/bench\n0::/\n"
    paths = host(tmp_path, cgroup, HYBRID, v1_quota("/sys/fs/cgroup/cpu/bench", 100_000))
    budget = usable_cpus(affinity=range(2), **paths)
    assert budget.count == 1 and "at /sys/fs/cgroup/cpu/bench" in budget.reason


# -- cgroup v2 -------------------------------------------------------------------

def test_a_v2_quota_limits_the_cpus(tmp_path):
    paths = host(tmp_path, "0::/kubepods/pod1/c1\n", V2, {"/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "300000 100000"})
    budget = usable_cpus(affinity=range(64), **paths)
    assert budget.count == 3 and "3 CPUs at /sys/fs/cgroup/kubepods/pod1/c1" in budget.reason


def test_a_v2_quota_of_max_is_no_limit(tmp_path):
    paths = host(tmp_path, "0::/user.slice\n", V2, {"/sys/fs/cgroup/user.slice/cpu.max": "max 100000"})
    assert usable_cpus(affinity=EIGHT, **paths) == CpuBudget(8, "affinity mask of 8 CPUs; no cgroup CPU quota")


def test_a_fractional_quota_rounds_down_and_never_below_one(tmp_path):
    paths = host(tmp_path, "0::/b\n", V2, {"/sys/fs/cgroup/b/cpu.max": "150000 100000"})
    assert usable_cpus(affinity=EIGHT, **paths).count == 1
    small = host(tmp_path / "small", "0::/a\n", V2, {"/sys/fs/cgroup/a/cpu.max": "50000 100000"})
    budget = usable_cpus(affinity=EIGHT, **small)
    assert budget.count == 1 and "0.5 CPUs" in budget.reason


def test_v2_nested_groups_the_parent_with_the_smaller_quota_wins(tmp_path):
    paths = host(tmp_path, "0::/kubepods/pod1/c1\n", V2, {
        "/sys/fs/cgroup/kubepods/cpu.max": "400000 100000",
        "/sys/fs/cgroup/kubepods/pod1/cpu.max": "200000 100000",
        "/sys/fs/cgroup/kubepods/pod1/c1/cpu.max": "max 100000"})
    budget = usable_cpus(affinity=range(64), **paths)
    assert budget.count == 2 and "at /sys/fs/cgroup/kubepods/pod1 " in budget.reason


# -- the affinity mask -----------------------------------------------------------

def test_an_affinity_mask_smaller_than_the_quota_wins(tmp_path):
    paths = host(tmp_path, "0::/job\n", V2, {"/sys/fs/cgroup/job/cpu.max": "400000 100000"})
    budget = usable_cpus(affinity={3}, **paths)
    assert budget.count == 1
    assert budget.reason.startswith("affinity mask of 1 CPU (cgroup CPU quota of 4 CPUs at /sys/fs/cgroup/job")


def test_without_any_cgroup_files_the_affinity_mask_decides(tmp_path):
    budget = usable_cpus(proc_root=tmp_path / "no-proc", fs_root=tmp_path, affinity={0, 1, 2})
    assert budget == CpuBudget(3, "affinity mask of 3 CPUs; no cgroup CPU quota")


def test_listed_mounts_without_their_files_mean_no_quota(tmp_path):
    paths = host(tmp_path, "4:cpu,cpuacct:/job\n0::/job\n", V1_CPU + V2, {})
    assert usable_cpus(affinity=EIGHT, **paths).count == 8


def test_this_process_gets_at_least_one_cpu():
    assert 1 <= usable_cpus().count <= len(threads.affinity_cpus())


# -- configure_torch_threads -----------------------------------------------------

@pytest.fixture
def interop(monkeypatch):
    """Record inter-op thread requests: torch accepts only one per process, so the real one is not called."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_interop_threads", calls.append)
    return calls


def test_an_explicit_count_wins_over_detection(monkeypatch, interop, caplog):
    monkeypatch.setattr(threads, "usable_cpus", lambda: pytest.fail("an explicit count must not detect"))
    previous = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="rewind_runtime.threads"):
            choice = configure_torch_threads(3, "trainer")
        assert (choice.threads, choice.reason) == (3, "torch_threads 3, set explicitly")
        assert torch.get_num_threads() == 3 and interop == [3]
        assert "trainer: torch uses 3 thread(s): torch_threads 3, set explicitly" in caplog.text
    finally:
        torch.set_num_threads(previous)


def test_zero_detects_the_usable_cpus(monkeypatch, interop):
    monkeypatch.setattr(threads, "usable_cpus", lambda: CpuBudget(1, "affinity mask of 1 CPU; no cgroup CPU quota"))
    previous = torch.get_num_threads()
    try:
        choice = configure_torch_threads(0, "buffer")
        assert choice.threads == 1 == torch.get_num_threads()
        assert choice.reason == "detected: affinity mask of 1 CPU; no cgroup CPU quota"
    finally:
        torch.set_num_threads(previous)


def test_inter_op_threads_already_fixed_are_left_as_they_are(monkeypatch):
    def refuse(n: int) -> None:
        raise RuntimeError("cannot set number of interop threads after parallel work has started")

    monkeypatch.setattr(torch, "set_num_interop_threads", refuse)
    previous = torch.get_num_threads()
    try:
        assert configure_torch_threads(2, "trainer").threads == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def test_a_negative_count_is_an_invalid_argument():
    with pytest.raises(InvalidArgument, match="torch_threads: must be 0"):
        configure_torch_threads(-1, "trainer")
