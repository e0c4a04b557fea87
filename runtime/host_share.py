"""HostShare: the trainings on one host split its CPUs between them, with no flag.

torch takes one intra-op thread per CPU a process may use (runtime/threads.py).
Two trainings on a 2-core host then run four spinning OpenMP threads on two
cores, and each goes at about a tenth of its speed alone: detection is per
process, and nothing tells one training that another started beside it.

So every training that chooses its threads by itself registers in a folder
shared by the host's trainings: a file per process, named by its pid and
holding the process's start time (so that a reused pid is not counted). At
each boundary of its loop (on the thread that trains: torch's thread count is
that thread's), it counts the trainings that are still alive and takes its
share, `usable CPUs // trainings` (at least 1). A run that ends removes its
file; one killed -9 is recognised as gone by its pid and its file is removed
by the next one to look.

    share = HostShare.join(folder, cpus=4, who="trainer")
    share.apply()       # at a boundary: 2 threads while another training runs, 4 when it is gone
    share.leave()
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

CHECK_EVERY_S = 2.0   # how often apply() looks at the folder (it is called at every boundary)


def default_folder() -> Path:
    """Where the trainings of this user on this host register: <temp folder>/rewind-<uid>/trainings."""
    return Path(tempfile.gettempdir()) / f"rewind-{os.getuid()}" / "trainings"


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ("" when there is no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")".
    return stat.rsplit(")", 1)[1].split()[19]


class HostShare:
    """This process's registration among the host's trainings, and the thread count it implies.

    Args:
        folder: the registry shared by the host's trainings.
        cpus: the CPUs this process may use (affinity mask and cgroup quota): its thread count now.
        set_threads: sets the thread count (torch.set_num_threads in a training).
        clock: monotonic seconds (tests).
    """

    def __init__(self, folder: Path, cpus: int, set_threads: Callable[[int], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.folder, self.cpus, self.set_threads, self.clock = folder, cpus, set_threads, clock
        self.pid = os.getpid()
        self.file = folder / f"{self.pid}.json"
        self.threads = cpus
        self._checked = -CHECK_EVERY_S

    @classmethod
    def join(cls, folder: Path, cpus: int, set_threads: Callable[[int], None],
             clock: Callable[[], float] = time.monotonic) -> HostShare:
        """Register this process, and take its share now."""
        share = cls(folder, cpus, set_threads, clock)
        folder.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": share.pid, "start_time": start_time(share.pid)})
        temporary = share.file.with_suffix(".tmp")
        temporary.write_text(record)
        temporary.replace(share.file)  # never half-written to a reader
        share.apply()
        return share

    def trainings(self) -> int:
        """Live registered trainings (this one included); files of processes that are gone are removed."""
        live = 0
        for path in self.folder.glob("*.json"):
            try:
                record = json.loads(path.read_text())
                alive = record["start_time"] and start_time(int(record["pid"])) == record["start_time"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # removed meanwhile, or not ours to judge
            if alive:
                live += 1
            else:
                path.unlink(missing_ok=True)
        return max(live, 1)

    def apply(self) -> int:
        """Take this process's share now (at most every CHECK_EVERY_S seconds); returns the thread count."""
        now = self.clock()
        if now - self._checked < CHECK_EVERY_S:
            return self.threads
        self._checked = now
        runs = self.trainings()
        threads = max(1, self.cpus // runs)
        if threads != self.threads:
            log.info("%d training(s) on this host: torch uses %d thread(s) of the %d CPU(s) this one may use",
                     runs, threads, self.cpus)
            self.threads = threads
            self.set_threads(threads)
        return self.threads

    def leave(self) -> None:
        """Unregister: the others take this one's CPUs at their next look."""
        self.file.unlink(missing_ok=True)
