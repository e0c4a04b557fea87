"""Where each stored episode came from, and a summary per writer.

An episode's origin is what its writer said of it: the routing key's writer
and index ("" and 0 for an episode added without a key), the generation its
write was stamped with, and the version of the policy it was collected with
(0: unknown, or random actions). A buffer keeps one origin per stored
episode, oldest first like the writer's episodes (whose ids run contiguously
up to episodes_added - 1), so an eviction drops the oldest origins.

Per writer it also keeps what outlives its episodes: how many it ever added,
its largest index and generation, and the policy version of its latest
episode; and, of its stored episodes, how many hold each policy version (so
the newest and oldest stored versions cost no scan of the episodes).

Writers are collectors, dozens at most: a buffer keeps at most MAX_WRITERS of
them. A writer with no episode stored is forgotten (least recently added
first) when the table needs its place; an episode of a new writer while
MAX_WRITERS writers all have episodes stored is refused (RESOURCE_EXHAUSTED).

In a snapshot's header the origins are the optional key "origins", written
only when some episode was attributed (a buffer that only ever took
unattributed episodes writes the header earlier releases wrote and read):

    {"writers": [[writer, added, newest index, generation, latest policy version], ...],
     "episodes": [[writer number, index, generation, policy version], ...]}

with the writers least recently added first and one episode entry per entry
of the header's writer.episodes, in the same order. A snapshot without the key
(every snapshot written before origins existed) restores with every episode
unattributed, all of them counted under writer "".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rewind.errors import DataLoss, ResourceExhausted

MAX_WRITERS = 1024
MAX_WRITER_CHARS = 256  # as a routing key's writer
# Header bytes the origins may take (snapshot.restore_caps): a writer entry is at most its name (256
# characters, 12 JSON bytes each as an escaped surrogate pair) and four 19-digit numbers; an episode
# entry "[w,i,g,v]," at most 67 bytes (w < 1,024), and an episode has at least 2 transitions.
WRITER_JSON_BYTES = 3_200
ORIGIN_BYTES_PER_TRANSITION = 34
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Origin:
    """What a writer said of one episode (the generation comes with the write)."""

    writer: str = ""
    index: int = 0
    policy_version: int = 0


UNATTRIBUTED = Origin()


@dataclass(frozen=True)
class WriterStats:
    """One writer's episodes in a buffer (rewind.buffer.v1.WriterStats)."""

    writer: str
    episodes: int                # stored now
    episodes_added: int
    newest_index: int
    generation: int
    newest_policy_version: int   # of the stored episodes (0: none stored)
    oldest_policy_version: int
    latest_policy_version: int   # of its most recent episode


class _Record:
    """One writer's counters, and the policy versions of its stored episodes."""

    __slots__ = ("added", "stored", "newest_index", "generation", "latest_version", "versions")

    def __init__(self, added: int = 0, newest_index: int = 0, generation: int = 0, latest_version: int = 0) -> None:
        self.added, self.stored = added, 0
        self.newest_index, self.generation, self.latest_version = newest_index, generation, latest_version
        self.versions: dict[int, int] = {}  # policy version -> its stored episodes with it

    def keep(self, version: int) -> None:
        self.stored += 1
        self.versions[version] = self.versions.get(version, 0) + 1

    def drop(self, version: int) -> None:
        self.stored -= 1
        left = self.versions[version] - 1
        if left:
            self.versions[version] = left
        else:
            del self.versions[version]


class Origins:
    """The origins of a buffer's stored episodes and its writers' summaries; the buffer's lock guards it."""

    def __init__(self) -> None:
        self._episodes: deque[tuple[str, int, int, int]] = deque()  # (writer, index, generation, version)
        self._writers: dict[str, _Record] = {}  # least recently added first

    def check_room(self, origins: Iterable[Origin]) -> None:
        """Refuse episodes of new writers that the table has no place for (nothing changes).

        Raises:
            ResourceExhausted: naming the first writer refused.
        """
        new = list(dict.fromkeys(o.writer for o in origins if o.writer not in self._writers))
        if not new:
            return
        busy = sum(1 for record in self._writers.values() if record.stored)
        if busy + len(new) > MAX_WRITERS:
            raise ResourceExhausted(
                f"routing.writer: {new[0]!r:.80} would be one writer too many: this buffer keeps the origins of at "
                f"most {MAX_WRITERS:,} writers with episodes stored, and {busy:,} have some; use fewer writer ids")

    def add(self, origins: Sequence[Origin], generation: int) -> None:
        """Record newly stored episodes (oldest first), written with `generation`."""
        for origin in origins:
            record = self._writers.pop(origin.writer, None) or _Record()
            self._writers[origin.writer] = record  # the most recently added last
            record.added += 1
            record.newest_index = max(record.newest_index, origin.index)
            record.generation = max(record.generation, generation)
            record.latest_version = origin.policy_version
            record.keep(origin.policy_version)
            self._episodes.append((origin.writer, origin.index, generation, origin.policy_version))

    def keep(self, stored: int) -> None:
        """Drop the origins of evicted episodes (the oldest) until `stored` remain; forget idle writers past
        the bound."""
        while len(self._episodes) > stored:
            writer, _, _, version = self._episodes.popleft()
            self._writers[writer].drop(version)
        excess = len(self._writers) - MAX_WRITERS
        if excess > 0:
            for writer in [w for w, record in self._writers.items() if not record.stored][:excess]:
                del self._writers[writer]

    def stats(self) -> tuple[WriterStats, ...]:
        """Every writer's summary, sorted by writer."""
        return tuple(
            WriterStats(writer, r.stored, r.added, r.newest_index, r.generation, max(r.versions, default=0),
                        min(r.versions, default=0), r.latest_version)
            for writer, r in sorted(self._writers.items()))

    def to_json(self, episodes_added: int) -> dict | None:
        """The header's "origins" (see the module's docstring); None when no episode was ever attributed."""
        if self._unattributed(episodes_added):
            return None
        numbers = {writer: i for i, writer in enumerate(self._writers)}
        return {"writers": [[w, r.added, r.newest_index, r.generation, r.latest_version]
                            for w, r in self._writers.items()],
                "episodes": [[numbers[w], index, generation, version]
                             for w, index, generation, version in self._episodes]}

    def _unattributed(self, episodes_added: int) -> bool:
        """Every episode ever added had no routing key, no generation and policy version 0."""
        if not self._writers:
            return True
        record = self._writers.get("")
        return (len(self._writers) == 1 and record is not None and record.added == episodes_added
                and record.newest_index == record.generation == record.latest_version == 0
                and set(record.versions) <= {0})

    @classmethod
    def from_json(cls, value: dict | None, stored: int, episodes_added: int) -> Origins:
        """The origins of a snapshot's header (checked by parse()); None: every episode unattributed."""
        origins = cls()
        if value is None:
            if episodes_added:
                origins._writers[""] = record = _Record(added=episodes_added)
                for _ in range(stored):
                    record.keep(0)
                origins._episodes.extend([("", 0, 0, 0)] * stored)
            return origins
        names = [entry[0] for entry in value["writers"]]
        for name, added, newest_index, generation, latest in value["writers"]:
            origins._writers[name] = _Record(added, newest_index, generation, latest)
        for number, index, generation, version in value["episodes"]:
            origins._writers[names[number]].keep(version)
            origins._episodes.append((names[number], index, generation, version))
        return origins


def parse(value: object, stored: int, episodes_added: int, generation: int) -> dict | None:
    """A snapshot header's "origins", checked in full against the writer's `stored` episodes.

    Raises:
        DataLoss: naming the entry at fault.
    """
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"writers", "episodes"}:
        raise DataLoss("snapshot.origins: an object with writers and episodes is expected")
    writers = _writers(value["writers"], episodes_added, generation)
    episodes = value["episodes"]
    if not isinstance(episodes, list) or len(episodes) != stored:
        raise DataLoss(f"snapshot.origins.episodes: a list of one entry per stored episode ({stored}) is expected")
    counts = [0] * len(writers)
    last: dict[int, int] = {}
    for i, entry in enumerate(episodes):
        where = f"snapshot.origins.episodes[{i}]"
        if not isinstance(entry, list) or len(entry) != 4 or not all(_is_count(x) for x in entry):
            raise DataLoss(f"{where}: [writer number, index, generation, policy version] is expected")
        number, index, stamped, version = entry
        if number >= len(writers) or index > writers[number][2] or stamped > writers[number][3]:
            raise DataLoss(f"{where}: writer {number} is not one of the {len(writers)} writers, or its index or "
                           "generation passes that writer's")
        counts[number] += 1
        last[number] = version
    for number, count in enumerate(counts):
        if count > writers[number][1] or (count and last[number] != writers[number][4]):
            raise DataLoss(f"snapshot.origins.writers[{number}]: {count} episodes stored of {writers[number][1]} "
                           "added, or its latest policy version is not its newest stored episode's")
    return value


def _writers(value: object, episodes_added: int, generation: int) -> list[list]:
    """The writer table, checked: unique names, counts that add up, generations within the buffer's."""
    if not isinstance(value, list) or len(value) > MAX_WRITERS:
        raise DataLoss(f"snapshot.origins.writers: a list of at most {MAX_WRITERS:,} writers is expected")
    seen: set[str] = set()
    for i, entry in enumerate(value):
        if (not isinstance(entry, list) or len(entry) != 5 or not isinstance(entry[0], str)
                or len(entry[0]) > MAX_WRITER_CHARS or entry[0] in seen or not all(_is_count(x) for x in entry[1:])):
            raise DataLoss(f"snapshot.origins.writers[{i}]: [writer (each once, at most {MAX_WRITER_CHARS} "
                           "characters), added, newest index, generation, latest policy version] is expected")
        if entry[3] > generation:
            raise DataLoss(f"snapshot.origins.writers[{i}]: generation {entry[3]} passes the buffer's {generation}")
        seen.add(entry[0])
    if sum(entry[1] for entry in value) > episodes_added:
        raise DataLoss(f"snapshot.origins.writers: more episodes added than the buffer's {episodes_added}")
    return value


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT64_MAX
