"""ShardedBufferClient: the shards of one replay buffer behind BufferClient's surface.

    from rewind import ShardedBufferClient
    buffer = ShardedBufferClient(["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"], writer="collector-0")
    buffer.add(episode)                                 # to one shard, picked by a rendezvous hash
    obs, action, reward, done = buffer.sample()         # uniform over every shard's episodes
    for obs, action, reward, done in buffer.batches(prefetch=4):
        ...                                             # one prefetching stream per shard

Routing. An episode is inserted whole into one shard. Its routing key is (the run's routing seed, this
writer's id, this writer's episode index); the live shard with the highest hash of (key, shard number)
takes it (rendezvous hashing), so the same key always picks the same shard among the same live shards,
and a lost shard moves only its own share. A shard is known by its place in the list of addresses, not
by its address, so a run resumed on other hosts or ports routes as it did.

Sampling. Each shard's sampler draws episodes uniformly, then a start in the episode (TD-MPC2's
SliceSampler). So that a batch is a uniform sample of the union, as if one buffer held every shard's
episodes, the sequences of a batch are split among the shards by a multinomial draw weighted by each
shard's sampleable episodes, as every reply reports them; each shard then samples exactly its share
(SampleSequences, asked `prefetch` batches ahead). The draws come from a seeded generator that
state_dict() saves. Reverb instead reads each sample stream from one server, so a small shard's items
are oversampled.

Shard loss. A shard that fails a call, or lets a streamed share wait longer than `shard_timeout_s`,
gets weight 0 at once: its share of the batch in hand is drawn again from the others, and inserts go
to the others. It is probed with growing backoff; once it answers it is "answering" but still not a
shard of the run, since a restarted shard is empty: it gets weight again only when readmit() says
that it was restored (the trainer restores it from the last cut, then readmits it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rewind.buffer.v1 import buffer_pb2
from rewind.buffer_client import DEFAULT_TIMEOUT_S, BufferClient, StatsView, _episodes_of
from rewind.channel import DEFAULT_MAX_MESSAGE_BYTES
from rewind.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    RewindError,
    Unavailable,
    from_rpc_error,
)
from rewind.security import ClientSecurity

if TYPE_CHECKING:
    from rewind.buffer_messages import BatchTuple

log = logging.getLogger(__name__)

LIVE, DOWN, ANSWERING = "live", "down", "answering"
# A lost shard is first probed this long after it was lost, then with doubling backoff (at most 30 s).
PROBE_FIRST_S, PROBE_TICK_S = 0.25, 0.1
# Errors that say the shard (not the request) is the problem, unless rate_limited() says otherwise.
SHARD_LOST = (Unavailable, DeadlineExceeded)
RATE_LIMITED = "RATE_LIMITED"


def rate_limited(error: RewindError) -> bool:
    """The shard answered, but its rate limiter held the call back past its wait: the shard is not lost, and the
    caller may try again (a learner waiting for collectors, a collector waiting for the learner)."""
    return error.reason == RATE_LIMITED


@dataclass
class Shard:
    """One shard: its client, whether it is a shard of the run now, and what it last said it holds."""

    address: str
    client: BufferClient
    index: int = 0                 # its place in the list: what routing knows it by
    state: str = LIVE
    episodes: int = 0              # sampleable episodes, as its last reply said
    stored: int = -1               # episodes stored, as its last add or stats said (-1: not known yet)
    starts: int = 0                # sampleable sequence starts, likewise
    failures: int = 0              # consecutive failed probes
    next_probe: float = 0.0
    lost: list[str] = field(default_factory=list)  # why it was dropped, newest last


def resolve(addresses: Sequence[str] | str) -> list[str]:
    """host:port entries, or a "dns:///name:port" whose every address is a shard (sorted, so stable)."""
    if isinstance(addresses, str):
        if not addresses.startswith("dns:///"):
            return [a.strip() for a in addresses.split(",") if a.strip()]
        host, _, port = addresses.removeprefix("dns:///").rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"addresses: {addresses!r} is not dns:///NAME:PORT")
        try:
            infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unavailable(f"addresses: {host} does not resolve ({exc})") from None
        return sorted({f"[{i[4][0]}]:{port}" if ":" in i[4][0] else f"{i[4][0]}:{port}" for i in infos})
    return list(addresses)


def rendezvous_score(seed: int, writer: str, index: int, shard: int) -> int:
    """The weight of shard number `shard` for the key (seed, writer, index): the highest among live shards wins."""
    digest = hashlib.blake2b(f"{seed}\0{writer}\0{index}\0{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class ShardedBufferClient(StatsView):
    """BufferClient's surface over N buffer services that hold one buffer between them.

    Args:
        addresses: the shards' host:port (a list, a comma-separated string, or "dns:///name:port").
        buffer: the buffer's name on every shard.
        writer: this writer's id in routing keys (a collector's name); default: host name and pid.
        routing_seed: the run's routing seed (the same for every writer of the run).
        seed: seeds the generator that splits batches among shards (saved by state_dict()).
        generation: the run generation every write is stamped with (0: unstamped); shards that a newer
            generation wrote to refuse them (FailedPrecondition).
        shard_timeout_s: how long a streamed share may keep the batch waiting before its shard is dropped.
        timeout, max_message_bytes, security: as BufferClient's, for every shard.
    """

    def __init__(self, addresses: Sequence[str] | str, buffer: str = "buffer", *, writer: str = "",
                 routing_seed: int = 0, seed: int = 0, generation: int = 0, shard_timeout_s: float = 1.0,
                 timeout: float = DEFAULT_TIMEOUT_S, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 security: ClientSecurity | None = None) -> None:
        import torch

        found = resolve(addresses)
        if not found:
            raise InvalidArgument("addresses: no shard given")
        if len(set(found)) != len(found):
            raise InvalidArgument(f"addresses: a shard is named twice in {found}")
        self.buffer, self.writer = buffer, writer or f"{socket.gethostname()}-{os.getpid()}"
        self.routing_seed, self.shard_timeout_s, self.timeout = routing_seed, shard_timeout_s, timeout
        self.generation = generation
        self.shards = [Shard(a, BufferClient(a, buffer, timeout=timeout, max_message_bytes=max_message_bytes,
                                             security=security), i) for i, a in enumerate(found)]
        self._generator = torch.Generator().manual_seed(seed)
        self._episode_index = 0
        self._lock = threading.RLock()
        self._readmitted = threading.Condition(self._lock)
        self._pool = ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="rewind-shards")
        self._batch_size: int | None = None
        self.on_answering: Callable[[str], None] | None = None  # told when a lost shard answers again
        self._prober: threading.Thread | None = None
        self._closed = threading.Event()

    # -- shards --------------------------------------------------------------

    @property
    def live(self) -> list[Shard]:
        with self._lock:
            return [s for s in self.shards if s.state == LIVE]

    @property
    def shards_available(self) -> int:
        return len(self.live)

    def drop(self, shard: Shard, why: str) -> None:
        """Give `shard` weight 0 and route nothing to it until readmit(); a background thread probes it.

        A shard that answers again but could not be restored is dropped again, and probed again.
        """
        with self._lock:
            if shard.state == DOWN:
                return
            shard.state, shard.failures, shard.next_probe = DOWN, 0, time.monotonic() + PROBE_FIRST_S
            shard.lost.append(why)
            log.warning("shard %s lost (%s): the other shards take its share until it is back", shard.address, why)
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(target=self._probe_while_down, name="rewind-shard-probe",
                                                daemon=True)
                self._prober.start()

    def _probe_while_down(self) -> None:
        """Probe lost shards off the data path, until none is lost (or the client closes)."""
        while not self._closed.wait(PROBE_TICK_S):
            self.probe()
            with self._lock:
                if not any(s.state == DOWN for s in self.shards):
                    return

    def readmit(self, address: str, check: bool = True) -> None:
        """Make a shard that was restored (from the run's last cut) a shard of the run again.

        Args:
            check: ask it first (GetStats: it must answer). A collector, whose token may not, takes the
                learner's word instead (GetWeights' live_shards) and learns its counts as it goes.
        """
        shard = self.shard(address)
        stats = shard.client.stats() if check else None
        with self._lock:
            shard.state = LIVE
            if stats is not None:
                shard.episodes, shard.starts = stats.sampleable_episodes, stats.sampleable_starts
            self._readmitted.notify_all()

    def probe(self) -> list[str]:
        """Ask every lost shard whose backoff has passed whether it answers; returns those that newly do."""
        back = []
        for shard in [s for s in self.shards if s.state == DOWN and s.next_probe <= time.monotonic()]:
            try:
                shard.client.stats(timeout=max(self.shard_timeout_s, 1.0))
            except NotFound:
                pass  # it answers: a restarted service, without the buffer until it is restored
            except RewindError:
                with self._lock:
                    shard.failures += 1
                    shard.next_probe = time.monotonic() + min(0.25 * 2 ** shard.failures, 30.0)
                continue
            with self._lock:
                shard.state = ANSWERING
            back.append(shard.address)
            if self.on_answering is not None:
                self.on_answering(shard.address)
        return back

    def shard(self, address: str) -> Shard:
        for shard in self.shards:
            if shard.address == address:
                return shard
        raise InvalidArgument(f"address: {address!r} is not one of the shards {[s.address for s in self.shards]}")

    def _require_live(self) -> list[Shard]:
        live = self.live
        if not live:
            why = "; ".join(f"{s.address}: {s.lost[-1] if s.lost else s.state}" for s in self.shards)
            raise Unavailable(f"buffer {self.buffer!r}: none of the {len(self.shards)} shards is available ({why})")
        return live

    # -- inserts -------------------------------------------------------------

    def route(self, index: int, live: Sequence[Shard] | None = None) -> Shard:
        """The live shard that takes this writer's episode `index`."""
        candidates = live if live is not None else self._require_live()
        return max(candidates, key=lambda s: rendezvous_score(self.routing_seed, self.writer, index, s.index))

    def _key(self, index: int) -> buffer_pb2.RoutingKey:
        return buffer_pb2.RoutingKey(seed=self.routing_seed, writer=self.writer, index=index)

    def add(self, td, policy_version: int = 0, spill_after_s: float | None = None) -> int:
        """Add one episode to the shard its routing key picks; returns the episodes stored on all live shards
        (the picked one's now, the others' as this client last saw them).

        Args:
            policy_version: the version of the policy the episode was collected with (0: unknown, or random
                actions); the shard keeps it with the episode's writer, index and generation (see writers()).
            spill_after_s: a collector's: when the picked shard's rate limiter holds the insert back this long,
                try the next live shard in the key's rendezvous order, and so on. Each shard's limiter then
                paces the learner without the deadlock of one shard full (inserts wait) and another empty
                (the learner's batches, which draw from every shard, wait). Routing is then no longer a
                function of the key alone: for collectors, whose exactness is statistical. None: the picked
                shard only (the single-process trainer's reproducible routing).

        Raises:
            DeadlineExceeded: reason RATE_LIMITED, when every live shard (or the picked one) held it back.
        """
        with self._lock:
            index, self._episode_index = self._episode_index, self._episode_index + 1
        held: set[str] = set()
        while True:
            live = [s for s in self._require_live() if s.address not in held]
            if not live:
                raise DeadlineExceeded(f"add: the rate limiters of all {len(held)} live shards held episode {index} "
                                       f"back for {spill_after_s:g} s each; the learner is behind", reason=RATE_LIMITED)
            shard = self.route(index, live)
            try:
                shard.stored = shard.client.add(td, routing=self._key(index), generation=self.generation,
                                                policy_version=policy_version, timeout=spill_after_s)
                break
            except SHARD_LOST as exc:
                # Spilling, a deadline is a shard that held the episode back (its limiter's answer may come just
                # after the short deadline on a busy host); one that does not answer at all is Unavailable.
                held_back = rate_limited(exc) or (spill_after_s is not None and isinstance(exc, DeadlineExceeded))
                if not held_back:
                    self.drop(shard, f"add: {exc.message}")
                elif spill_after_s is None:
                    raise
                else:
                    held.add(shard.address)
        return self._stored_total()

    def load(self, td, policy_versions: Sequence[int] = ()) -> int:
        """Add many episodes, each to the shard its routing key picks (one LoadEpisodes per shard).

        Args:
            policy_versions: as add()'s policy_version, one per episode (or none: all 0).
        """
        episodes = _episodes_of(td)
        if policy_versions and len(policy_versions) != len(episodes):
            raise InvalidArgument(f"policy_versions: {len(policy_versions)} versions for {len(episodes)} episodes; "
                                  "give one per episode, or none")
        with self._lock:
            first, self._episode_index = self._episode_index, self._episode_index + len(episodes)
        pending = list(range(first, first + len(episodes)))
        while pending:
            live = self._require_live()
            groups: dict[str, list[int]] = {}
            for index in pending:
                groups.setdefault(self.route(index, live).address, []).append(index)
            pending = []
            for address, indices in groups.items():
                shard = self.shard(address)
                try:
                    shard.stored = shard.client.load([episodes[i - first] for i in indices],
                                                     routing=[self._key(i) for i in indices],
                                      generation=self.generation,
                                      policy_versions=[policy_versions[i - first] for i in indices] if policy_versions
                                      else ())
                except SHARD_LOST as exc:
                    if rate_limited(exc):
                        raise
                    self.drop(shard, f"load: {exc.message}")
                    pending += indices
        return self._stored_total()

    def _stored_total(self) -> int:
        """Episodes stored on the live shards: each as its last add said, the others asked (GetStats) once.

        A collector's token may not call GetStats: shards it has not added to yet then count as 0.
        """
        for shard in self.live:
            if shard.stored < 0:
                try:
                    shard.stored = shard.client.stats().episodes
                except RewindError:
                    shard.stored = 0
        return sum(max(shard.stored, 0) for shard in self.live)

    # -- sampling ------------------------------------------------------------

    @property
    def batch_size(self) -> int:
        if self._batch_size is None:
            self._batch_size = int(self._require_live()[0].client.stats().settings.batch_size)
        return self._batch_size

    def sampleable(self) -> list[Shard]:
        """The live shards, once one of them holds an episode.

        While none does but a lost shard may come back with some (restored from the run's last cut), this
        waits for a readmission, at most `timeout` seconds: the learner pauses rather than fails.

        Raises:
            FailedPrecondition: no shard holds an episode, and none is lost.
            Unavailable: the wait ended, naming the lost shards.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            live = self.live
            if not any(s.episodes for s in live):
                self.refresh()
                live = self.live
            if any(s.episodes for s in live):
                return live
            lost = [s for s in self.shards if s.state != LIVE]
            if not lost:
                raise FailedPrecondition(f"buffer {self.buffer!r}: no shard holds an episode yet; add episodes first")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                why = "; ".join(f"{s.address} ({s.state}: {s.lost[-1] if s.lost else ''})" for s in lost)
                raise Unavailable(f"buffer {self.buffer!r}: the live shards hold no episode, and the lost ones did "
                                  f"not come back within {self.timeout:.0f} s: {why}")
            with self._readmitted:
                self._readmitted.wait(min(remaining, 1.0))

    def draw(self, live: Sequence[Shard], sequences: int) -> list[int]:
        """Split `sequences` among `live` by a multinomial weighted by their sampleable episodes."""
        import torch

        weights = torch.tensor([float(s.episodes) for s in live], dtype=torch.float64)
        if not weights.sum() > 0:
            self.refresh()
            weights = torch.tensor([float(s.episodes) for s in live], dtype=torch.float64)
            if not weights.sum() > 0:
                raise FailedPrecondition(f"buffer {self.buffer!r}: no shard holds an episode yet; add episodes first")
        with self._lock:
            picks = torch.multinomial(weights, sequences, replacement=True, generator=self._generator)
        return torch.bincount(picks, minlength=len(live)).tolist()

    def refresh(self) -> None:
        """Read every live shard's sampleable counts (GetStats)."""
        for shard in self.live:
            try:
                stats = shard.client.stats()
            except SHARD_LOST as exc:
                self.drop(shard, f"stats: {exc.message}")
                continue
            shard.stored = stats.episodes
            self._seen(shard, stats.sampleable_episodes, stats.sampleable_starts)

    def _seen(self, shard: Shard, episodes: int, starts: int) -> None:
        with self._lock:
            shard.episodes, shard.starts = episodes, starts

    def sample(self) -> BatchTuple:
        """One batch, uniform over the episodes of every live shard: obs (H+1, B, ...), action, reward, done."""
        return _join(self._sample_parts(self.batch_size))

    def _sample_parts(self, sequences: int) -> list[BatchTuple]:
        """`sequences` sequences drawn across the live shards, a part per shard; a lost shard's share is
        drawn again from the others."""
        from rewind.buffer_messages import decode_batch

        parts: list[BatchTuple] = []
        while sequences:
            live = self.sampleable()
            counts = self.draw(live, sequences)
            jobs = {self._pool.submit(s.client.sample_message, n): (s, n) for s, n in zip(live, counts, strict=True)
                    if n}
            sequences = 0
            for job, (shard, n) in jobs.items():
                try:
                    batch = job.result()
                except SHARD_LOST as exc:
                    if rate_limited(exc):
                        raise
                    self.drop(shard, f"sample: {exc.message}")
                    sequences += n
                    continue
                self._seen(shard, batch.sampleable_episodes, batch.sampleable_starts)
                parts.append(decode_batch(batch))
        return parts

    def batches(self, prefetch: int = 4, num_batches: int = 0) -> ShardedBatchStream:
        """Stream batches: one SampleSequences stream per shard, asked for each batch's share `prefetch` ahead."""
        return ShardedBatchStream(self, prefetch, num_batches)

    def __iter__(self) -> Iterator[BatchTuple]:
        return self.batches()

    # -- state ---------------------------------------------------------------

    def stats(self) -> buffer_pb2.BufferStats:
        """The live shards' stats summed (settings of the first, buffer_size the sum), their writers merged as
        writers() describes."""
        live = self._require_live()
        each = [s.client.stats() for s in live]
        # Ready when a batch can be drawn: some shard holds episodes, and every shard that does (the only
        # ones a batch draws from) is ready itself.
        holding = [s for s in each if s.episodes]
        total = buffer_pb2.BufferStats(name=self.buffer, settings=each[0].settings, device=each[0].device,
                                       ready=bool(holding) and all(s.ready for s in holding))
        total.settings.buffer_size = sum(s.settings.buffer_size for s in each)
        for key in ("transitions", "episodes", "bytes", "episodes_added", "episodes_evicted", "batches_sampled",
                    "sampleable_starts", "sampleable_episodes"):
            setattr(total, key, sum(getattr(s, key) for s in each))
        total.writers.extend(merge_writers(each))
        for shard, stats in zip(live, each, strict=True):
            self._seen(shard, stats.sampleable_episodes, stats.sampleable_starts)
        return total

    def writers(self) -> dict[str, buffer_pb2.WriterStats]:
        """Where the live shards' episodes came from, per writer (the routing key's writer), merged over the
        shards: episodes stored and ever added summed; newest_index, generation and newest_policy_version the
        largest; oldest_policy_version the smallest among the shards that store some of its episodes; and
        latest_policy_version that of its newest episode (on the shard with the largest newest_index; the
        largest on a tie), since a writer's indices rise.

        A learner's policy lag for a writer is its own weights version minus `latest_policy_version`.
        """
        return {w.writer: w for w in self.stats().writers}

    def shard_stats(self) -> dict[str, buffer_pb2.BufferStats | str]:
        """Each shard's own stats, or its state ("down", "answering") when it is not a shard of the run."""
        return {s.address: (s.client.stats() if s.state == LIVE else s.state) for s in self.shards}

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the draw generator, this writer's episode index, the routing seed."""
        with self._lock:
            return {"generator": self._generator.get_state(), "episode_index": self._episode_index,
                    "routing_seed": self.routing_seed, "writer": self.writer}

    def load_state_dict(self, state: dict) -> None:
        with self._lock:
            self._generator.set_state(state["generator"])
            self._episode_index = int(state["episode_index"])
            self.routing_seed, self.writer = int(state["routing_seed"]), str(state["writer"])

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for shard in self.shards:
            shard.client.close()

    def __enter__(self) -> ShardedBufferClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_writers(shards: Sequence[buffer_pb2.BufferStats]) -> list[buffer_pb2.WriterStats]:
    """The shards' per-writer stats as one buffer's (see ShardedBufferClient.writers()), sorted by writer."""
    by_writer: dict[str, list[buffer_pb2.WriterStats]] = {}
    for stats in shards:
        for writer in stats.writers:
            by_writer.setdefault(writer.writer, []).append(writer)
    merged = []
    for name, parts in sorted(by_writer.items()):
        holding = [p for p in parts if p.episodes]
        newest = max(parts, key=lambda p: (p.newest_index, p.latest_policy_version))
        merged.append(buffer_pb2.WriterStats(
            writer=name, episodes=sum(p.episodes for p in parts), episodes_added=sum(p.episodes_added for p in parts),
            newest_index=newest.newest_index, generation=max(p.generation for p in parts),
            newest_policy_version=max((p.newest_policy_version for p in holding), default=0),
            oldest_policy_version=min((p.oldest_policy_version for p in holding), default=0),
            latest_policy_version=newest.latest_policy_version))
    return merged


def _answers(shard: Shard, timeout: float) -> bool:
    try:
        shard.client.stats(timeout=timeout)
    except RewindError:
        return False
    return True


def _join(parts: list[BatchTuple]) -> BatchTuple:
    """Batch parts (time-major, batch on dim 1) as one batch."""
    if len(parts) == 1:
        return parts[0]  # one shard gave the whole batch: no copy
    import torch

    return tuple(torch.cat([p[i] for p in parts], dim=1) for i in range(4))  # type: ignore[return-value]


@dataclass(frozen=True)
class Reply:
    """A shard's streamed share of a batch, decoded (None when it was asked for none), and its counts."""

    parts: BatchTuple | None
    episodes: int
    starts: int


class _ShardStream:
    """One shard's SampleSequences stream: counts go in through a queue, batches come out in order."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.counts: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.call = shard.client.sample_sequences(iter(self.counts.get, None))
        threading.Thread(target=self._read, name=f"rewind-shard-{shard.address}", daemon=True).start()

    def _read(self) -> None:
        """Decode each reply here, off the learner's thread, as BufferClient's stream does."""
        import grpc

        from rewind.buffer_messages import decode_batch

        try:
            for response in self.call:
                batch = response.batch
                parts = decode_batch(batch) if batch.obs.shape and batch.obs.shape[1] else None
                self.replies.put(Reply(parts, batch.sampleable_episodes, batch.sampleable_starts))
        except grpc.RpcError as exc:
            self.replies.put(exc)

    def close(self) -> None:
        self.counts.put(None)
        self.call.cancel()


class ShardedBatchStream:
    """Batches assembled from every live shard's stream; a lost shard's share is drawn from the others."""

    def __init__(self, client: ShardedBufferClient, prefetch: int, num_batches: int) -> None:
        if not 1 <= prefetch <= 64:
            raise InvalidArgument(f"prefetch: {prefetch} is outside 1..64")
        self.client, self.prefetch, self.num_batches = client, prefetch, num_batches
        self.streams = {s.address: _ShardStream(s) for s in client._require_live()}
        self.asked: list[list[tuple[str, int]]] = []   # per batch in flight: (shard, sequences asked)
        self.sent = self.delivered = 0
        self.closed = False

    def _ask(self) -> None:
        """Draw the shares of the next batches and send them, until `prefetch` batches are in flight."""
        while self.sent - self.delivered < self.prefetch and (not self.num_batches or self.sent < self.num_batches):
            live = [s for s in self.client.live if s.address in self.streams]
            if not any(s.episodes for s in live):
                self.client.refresh()
                live = [s for s in self.client.live if s.address in self.streams]
            if not any(s.episodes for s in live):
                # This stream's shards hold nothing now (the ones with episodes were lost): the whole batch is
                # drawn when it is due, from the shards that hold episodes then (a readmitted one included).
                self.asked.append([("", self.client.batch_size)])
                self.sent += 1
                continue
            counts = self.client.draw(live, self.client.batch_size)
            for shard, n in zip(live, counts, strict=True):
                self.streams[shard.address].counts.put(n)
            self.asked.append([(s.address, n) for s, n in zip(live, counts, strict=True)])
            self.sent += 1

    def __iter__(self) -> ShardedBatchStream:
        return self

    def __next__(self) -> BatchTuple:
        if self.closed or (self.num_batches and self.delivered >= self.num_batches):
            raise StopIteration
        try:
            self._ask()
        except RewindError:
            self.close()  # the shards' streams end with it
            raise
        parts, missing = [], 0
        for address, n in self.asked.pop(0):
            stream = self.streams.get(address)
            reply = self._reply(stream) if stream is not None else None
            if reply is None:
                missing += n
                continue
            self.client._seen(stream.shard, reply.episodes, reply.starts)
            if reply.parts is not None:
                parts.append(reply.parts)
        if missing:  # the lost shards' shares of this batch, drawn again from the others
            parts += self.client._sample_parts(missing)
        self.delivered += 1
        return _join(parts)

    def _reply(self, stream: _ShardStream) -> Reply | None:
        """The shard's next reply, or None once it is lost: failed, or late by shard_timeout_s and not
        answering a GetStats within it either.

        Raises:
            DeadlineExceeded: reason RATE_LIMITED, when the shard answers but its rate limiter held the share
                back for `timeout` seconds (the stream is closed; the caller may open another).
        """
        client, waited = self.client, 0.0
        while True:
            try:
                reply = stream.replies.get(timeout=client.shard_timeout_s)
                break
            except queue.Empty:
                waited += client.shard_timeout_s
                if not _answers(stream.shard, client.shard_timeout_s):
                    reply = DeadlineExceeded(f"no reply for {waited:.1f} s, and it does not answer GetStats")
                    break
                if waited >= client.timeout:
                    reply = DeadlineExceeded(f"shard {stream.shard.address}: no batch for {waited:.1f} s though it "
                                             "answers: its rate limiter holds samples back", reason=RATE_LIMITED)
                    break
        if isinstance(reply, Reply):
            return reply
        error = reply if isinstance(reply, RewindError) else from_rpc_error(reply)
        if not isinstance(error, SHARD_LOST) or rate_limited(error):
            self.close()
            raise error  # the request, not the shard: e.g. the buffer is not ready yet
        self.client.drop(stream.shard, f"stream: {error.message}")
        stream.close()
        del self.streams[stream.shard.address]
        return None

    def close(self) -> None:
        self.closed = True
        for stream in self.streams.values():
            stream.close()

    def __enter__(self) -> ShardedBatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
