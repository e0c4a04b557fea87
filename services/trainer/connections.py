"""The trainer's connections: clients of the buffer and checkpoint services,
the services started for one run (--local-services), and the buffers it owns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rewind import BufferClient, CheckpointClient, ShardedBufferClient
from rewind.checkpoint.v1.checkpoint_pb2 import BufferTarget
from rewind.errors import FailedPrecondition, InvalidArgument, RewindError, Unavailable
from rewind_runtime.local import LocalService
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)

BUFFERS = ("buffer", "test_buffer")  # TD-MPC2's two buffers: training episodes, evaluation episodes
WRITER = "trainer"  # the trainer's id in routing keys: the same in every run, so that routing is reproducible


@dataclass(frozen=True)
class BufferPart:
    """One buffer the run owns on one buffer service: what a cut captures and a resume restores."""

    name: str             # "buffer" (or one shard of it) or "test_buffer"
    file: str             # its snapshot file in a checkpoint
    client: BufferClient
    capacity: int         # transitions it holds


@dataclass(frozen=True)
class Services:
    """Clients of the services one run talks to.

    `buffer` is where training episodes go and batches come from: one buffer service, or a
    ShardedBufferClient over several. `parts` are the single buffers behind both.
    """

    buffer: BufferClient | ShardedBufferClient
    test_buffer: BufferClient
    ckpt: CheckpointClient
    parts: tuple[BufferPart, ...]

    @property
    def shards(self) -> int:
        return sum(part.name == BUFFERS[0] for part in self.parts)

    @property
    def sharded(self) -> ShardedBufferClient | None:
        return self.buffer if isinstance(self.buffer, ShardedBufferClient) else None

    def stamp(self, generation: int) -> None:
        """Stamp every write from now on with the run's generation (the shards refuse older ones)."""
        for client in (self.buffer, self.test_buffer):
            client.generation = generation

    def close(self) -> None:
        for client in (self.buffer, self.test_buffer, self.ckpt):
            client.close()


def shard_file(index: int, shards: int) -> str:
    """The snapshot file of a shard in a checkpoint: buffer.snapshot for an unsharded run, as before."""
    return f"{BUFFERS[0]}.snapshot" if shards == 1 else f"{BUFFERS[0]}.shard-{index}.snapshot"


def shard_capacities(buffer_size: int, shards: int) -> list[int]:
    """buffer_size split among the shards, the first ones taking the remainder."""
    return [buffer_size // shards + (i < buffer_size % shards) for i in range(shards)]


def parts_of(shards: list[BufferClient], test_buffer: BufferClient, buffer_size: int) -> tuple[BufferPart, ...]:
    """The run's buffers: each shard's `buffer` (buffer_size split among them), and the whole test_buffer."""
    capacities = shard_capacities(buffer_size, len(shards))
    parts = tuple(BufferPart(BUFFERS[0], shard_file(i, len(shards)), client, capacities[i])
                  for i, client in enumerate(shards))
    return parts + (BufferPart(BUFFERS[1], f"{BUFFERS[1]}.snapshot", test_buffer, buffer_size),)


def open_services(settings: TrainSettings) -> Services:
    """Clients of the run's buffer(s) and checkpoint service (nothing is called yet).

    Raises:
        InvalidArgument: --shards N without the N addresses (or --local-services, which starts them).
    """
    if settings.shards > 1 and not settings.buffer_addresses:
        raise InvalidArgument(f"shards: {settings.shards} shards need --local-services, which starts them, or "
                              "--buffer-addresses naming them")
    addresses = settings.shard_addresses
    ckpt = CheckpointClient(settings.checkpoint_address, store_endpoints=settings.store_endpoints)
    if len(addresses) == 1:
        buffer = BufferClient(addresses[0], BUFFERS[0])
        shard_clients = [buffer]
    else:
        buffer = ShardedBufferClient(addresses, BUFFERS[0], writer=WRITER, routing_seed=settings.seed,
                                     seed=settings.seed)
        shard_clients = [shard.client for shard in buffer.shards]
    test_buffer = shard_clients[0].using(BUFFERS[1])
    return Services(buffer, test_buffer, ckpt, parts_of(shard_clients, test_buffer, settings.buffer_size))


def _reach(client, what: str, flag: str, timeout_s: float) -> None:
    try:
        client.wait_until_serving(timeout=timeout_s)
    except RewindError as exc:
        raise Unavailable(f"{what} at {client.address} is not reachable ({exc}); start it, or pass "
                          f"--{flag} host:port") from None


@contextmanager
def connect(settings: TrainSettings) -> Iterator[Services]:
    """Clients of the buffer service(s) and the checkpoint service, once all are SERVING.

    Raises:
        Unavailable: a service did not answer within wait_for_services_s, naming its address.
    """
    services = open_services(settings)
    flag = "buffer-addresses" if settings.buffer_addresses else "buffer-address"
    try:
        for part in services.parts[:-1]:  # the test buffer shares the first shard's service
            _reach(part.client, "buffer service", flag, settings.wait_for_services_s)
        _reach(services.ckpt, "checkpoint service", "checkpoint-address", settings.wait_for_services_s)
        yield services
    finally:
        services.close()


@contextmanager
def local_services(settings: TrainSettings) -> Iterator[tuple[TrainSettings, str]]:
    """Start the run's buffer service(s) (--shards of them) and a checkpoint service on free loopback
    ports; stop them after.

    Yields the settings with their addresses, and the URL of the checkpoint
    service's history pages ("" when it serves none).
    """
    log.info("starting %s and a checkpoint service (store %s)",
             "a buffer service" if settings.shards == 1 else f"{settings.shards} buffer services (shards)",
             settings.store_url)
    # Side by side: each spends its first seconds importing, on its own core. The trainer makes its buffers
    # with its own shapes. The buffer services upload their blocks where the trainer uploads trainer.pt (the
    # same store), so they get the same allow-list.
    buffers = [LocalService(["buffer", "serve", "--store-endpoints", ",".join(settings.store_endpoints)], wait=False)
               for _ in range(settings.shards)]
    ckpt = LocalService(["ckpt", "serve", "--store", settings.store_url], wait=False)
    try:
        for buffer in buffers:
            buffer.wait_until_serving()
        ckpt.wait_until_serving()
        # getattr: a LocalService that reads no HTTP port serves no pages
        pages = getattr(ckpt, "http_url", "") or ""
        addresses = tuple(buffer.address for buffer in buffers)
        yield settings.replace(buffer_address=addresses[0], buffer_addresses=addresses if len(addresses) > 1 else (),
                               checkpoint_address=ckpt.address), pages
        ckpt.terminate(timeout=60)
    finally:
        ckpt.kill()
        for buffer in buffers:
            buffer.terminate(timeout=60) if buffer.proc.poll() is None else buffer.kill()


def own_buffers(services: Services, cfg: AgentConfig, resumed_from: str, generation: int,
                limiter: dict | None = None) -> None:
    """Make every buffer the run's own: emptied with the agent's shapes on a fresh start, restored from the
    checkpoint's cut on resume (each shard from its own snapshot); writes are stamped with `generation`.

    `limiter`: a learner's rate limiter for each shard of `buffer` (rewind_trainer.learner.shard_limiter); a
    resume restores the cut's.

    A fresh run resets buffers that still hold episodes (a trainer that died
    before its first checkpoint leaves them behind): nothing of them can be resumed.

    Raises:
        DataLoss: a snapshot in the checkpoint fails its sha256 (the buffer keeps what it had).
        FailedPrecondition: a restored buffer does not sample what the agent learns from.
    """
    if resumed_from:
        targets = [BufferTarget(address=p.client.address, buffer=p.name, file=p.file) for p in services.parts]
        services.ckpt.restore_buffers(resumed_from, targets, generation=generation)
    else:
        for part in services.parts:
            reset(part, cfg, limiter if part.name == BUFFERS[0] else None)
    services.stamp(generation)
    for part in services.parts:
        check_buffer(part.client, cfg)


def reset(part: BufferPart, cfg: AgentConfig, limiter: dict | None = None) -> None:
    """Empty one of the run's buffers with the agent's shapes and the part's capacity (and a learner's limiter)."""
    # Without a learner's limiter, inserts_wait off: this process both collects and learns, so an insert that
    # waited for its own samples would wait for ever (as Acme does for single-process agents). A limiter the
    # service gives its buffers then only holds samples back.
    _, dropped = part.client.reset(buffer_size=part.capacity, batch_size=cfg.batch_size, horizon=cfg.horizon,
                                   min_history=0, **(limiter or {"inserts_wait": False}))
    if dropped:
        log.warning("buffer %r at %s held %d episodes that no checkpoint records: reset for this fresh run",
                    part.name, part.client.address, dropped)


def check_buffer(buffer: BufferClient, cfg: AgentConfig) -> None:
    """The buffer must sample what the agent learns from.

    Raises:
        FailedPrecondition: batch size or horizon differ, naming both.
    """
    settings = buffer.stats().settings
    wrong = [f"{name} is {getattr(settings, name)}, the agent needs {getattr(cfg, name)}"
             for name in ("batch_size", "horizon") if getattr(settings, name) != getattr(cfg, name)]
    if wrong:
        raise FailedPrecondition(f"buffer service at {buffer.address}: buffer {buffer.buffer!r}: "
                                 + "; ".join(wrong) + " (the checkpoint's buffers were made for another agent)")
