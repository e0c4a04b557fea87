"""The trainer's connections: clients of the buffer and checkpoint services,
the services started for one run (--local-services), and the buffers it owns.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rewind import BufferClient, CheckpointClient
from rewind.errors import FailedPrecondition, RewindError, Unavailable
from rewind_runtime.local import LocalService
from rewind_trainer.hparams import AgentConfig
from rewind_trainer.settings import TrainSettings

log = logging.getLogger(__name__)

BUFFERS = ("buffer", "test_buffer")  # TD-MPC2's two buffers: training episodes, evaluation episodes


@dataclass(frozen=True)
class Services:
    """Clients of the services one run talks to."""

    buffer: BufferClient
    test_buffer: BufferClient
    ckpt: CheckpointClient

    @property
    def buffers(self) -> tuple[BufferClient, BufferClient]:
        return self.buffer, self.test_buffer

    def close(self) -> None:
        for client in (self.buffer, self.test_buffer, self.ckpt):
            client.close()


def _reach(client, what: str, flag: str, timeout_s: float) -> None:
    try:
        client.wait_until_serving(timeout=timeout_s)
    except RewindError as exc:
        raise Unavailable(f"{what} at {client.address} is not reachable ({exc}); start it, or pass "
                          f"--{flag} host:port") from None


@contextmanager
def connect(settings: TrainSettings) -> Iterator[Services]:
    """Clients of the buffer and checkpoint services, once both are SERVING.

    Raises:
        Unavailable: a service did not answer within wait_for_services_s, naming its address.
    """
    buffer = BufferClient(settings.buffer_address, BUFFERS[0])
    ckpt = CheckpointClient(settings.checkpoint_address, store_endpoints=settings.store_endpoints)
    services = Services(buffer, buffer.using(BUFFERS[1]), ckpt)
    try:
        _reach(services.buffer, "buffer service", "buffer-address", settings.wait_for_services_s)
        _reach(services.ckpt, "checkpoint service", "checkpoint-address", settings.wait_for_services_s)
        yield services
    finally:
        services.close()


@contextmanager
def local_services(settings: TrainSettings) -> Iterator[tuple[TrainSettings, str]]:
    """Start a buffer and a checkpoint service on free loopback ports for this run; stop them after.

    Yields the settings with their addresses, and the URL of the checkpoint
    service's history pages ("" when it serves none).
    """
    log.info("starting a buffer service and a checkpoint service (store %s)", settings.store_url)
    # Side by side: each spends its first seconds importing, on its own core. The trainer makes its buffers
    # with its own shapes. The buffer service uploads its blocks where the trainer uploads trainer.pt (the
    # same store), so it gets the same allow-list.
    buffer = LocalService(["buffer", "serve", "--store-endpoints", ",".join(settings.store_endpoints)], wait=False)
    ckpt = LocalService(["ckpt", "serve", "--store", settings.store_url], wait=False)
    try:
        buffer.wait_until_serving()
        ckpt.wait_until_serving()
        # getattr: a LocalService that reads no HTTP port serves no pages
        pages = getattr(ckpt, "http_url", "") or ""
        yield settings.replace(buffer_address=buffer.address, checkpoint_address=ckpt.address), pages
        ckpt.terminate(timeout=60)
    finally:
        ckpt.kill()
        buffer.terminate(timeout=60) if buffer.proc.poll() is None else buffer.kill()


def own_buffers(services: Services, settings: TrainSettings, cfg: AgentConfig, resumed_from: str) -> None:
    """Make both buffers the run's own: emptied with the agent's shapes on a fresh start, restored on resume.

    A fresh run resets buffers that still hold episodes (a trainer that died
    before its first checkpoint leaves them behind): nothing of them can be resumed.

    Raises:
        DataLoss: a snapshot in the checkpoint fails its sha256 (the buffer keeps what it had).
        FailedPrecondition: a restored buffer does not sample what the agent learns from.
    """
    if resumed_from:
        services.ckpt.restore_buffers(resumed_from, [(b.address, b.buffer) for b in services.buffers])
    else:
        for client in services.buffers:
            # inserts_wait off: this process both collects and learns, so an insert that waited for its
            # own samples would wait for ever (as Acme does for single-process agents). A limiter the
            # service gives its buffers then only holds samples back.
            _, dropped = client.reset(buffer_size=settings.buffer_size, batch_size=cfg.batch_size,
                                      horizon=cfg.horizon, min_history=0, inserts_wait=False)
            if dropped:
                log.warning("buffer %r at %s held %d episodes that no checkpoint records: reset for this fresh run",
                            client.buffer, client.address, dropped)
    for client in services.buffers:
        check_buffer(client, cfg)


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
