"""Running the checkpoint service: `serve()` in a process of its own, `serve_in_process()` inside yours.

    host = serve(CheckpointSettings(store="s3://my-bucket/rewind"))   # returns once SERVING
    host.wait()                                                       # until SIGTERM (or host.stop())

    with serve_in_process("file:///tmp/x") as ckpt:                  # a CheckpointClient
        ckpt.list_runs()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection

from rewind import CheckpointClient
from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.errors import RewindError
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.history import History
from rewind_checkpoint.history import install as install_history
from rewind_checkpoint.metrics import CheckpointCollector, stats_of
from rewind_checkpoint.servicer import CheckpointServicer
from rewind_checkpoint.settings import CheckpointSettings
from rewind_checkpoint.store import open_store
from rewind_runtime.host import ServiceBinding, ServiceHost

log = logging.getLogger(__name__)

SERVICE_NAME = checkpoint_pb2.DESCRIPTOR.services_by_name["CheckpointService"].full_name
# A read token may call these; saving, deleting, restoring, retention changes and run files need a write token.
READ_METHODS = ("Download", "ListRuns", "ListCheckpoints", "Lookup", "GetRetention", "GetRunFile")
# A collector whose learner is unreachable falls back on the latest checkpoint's weights: it finds and reads it.
COLLECTOR_METHODS = ("Lookup", "Download")


def build(settings: CheckpointSettings, explicit: Collection[str] = ()) -> tuple[ServiceHost, Catalog]:
    """Open the store and create an unstarted host."""
    store = open_store(settings.store, timeout_s=settings.store_timeout_s, retries=settings.store_retries,
                       part_bytes=settings.part_mb * 1024 * 1024)
    catalog = Catalog(store, staging_max_age_s=settings.staging_max_age_s)
    servicer = CheckpointServicer(catalog, buffer_timeout_s=settings.buffer_timeout_s,
                                  buffer_addresses=settings.buffer_addresses, direct_uploads=settings.direct_uploads)
    binding = ServiceBinding(SERVICE_NAME, servicer, checkpoint_pb2_grpc.add_CheckpointServiceServicer_to_server,
                             read_methods=READ_METHODS, collector_methods=COLLECTOR_METHODS)
    host = ServiceHost.from_settings([binding], settings, explicit)
    host.metrics.register(CheckpointCollector(catalog))
    if host.http is not None:
        install_history(host.http, History(catalog))  # the pages and JSON API on the HTTP port
    return host, catalog


def _clean_staging(catalog: Catalog) -> None:
    try:
        stats_of(catalog).swept(catalog.clean_staging())
    except RewindError as exc:
        log.warning("staging clean-up skipped: %s", exc)


def _sweep_staging(catalog: Catalog, host: ServiceHost, interval_s: float) -> None:
    """Remove stale staging every interval, until the host stops."""
    while not host.stopped.wait(interval_s):
        _clean_staging(catalog)


def serve(settings: CheckpointSettings, *, handle_signals: bool = False, explicit: Collection[str] = ()) -> ServiceHost:
    """Start the checkpoint service and return its host once it reports SERVING.

    Args:
        settings: the service's settings.
        handle_signals: drain on SIGTERM/SIGINT (only from the main thread).
        explicit: the settings given by a flag, a variable or a file; their ports never fall back to free ones.

    Raises:
        Unavailable: the store cannot be reached, or the port cannot be bound.
        FailedPrecondition: the store refuses us (missing bucket, bad credentials).
    """
    host, catalog = build(settings, explicit)
    catalog.store.check()
    # Leftovers of a crashed predecessor go before we accept new uploads.
    _clean_staging(catalog)
    if handle_signals:
        host.install_signal_handlers()
    host.start()
    threading.Thread(target=_sweep_staging, args=(catalog, host, settings.clean_interval_s),
                     name="rewind-staging-sweep", daemon=True).start()
    log.info("checkpoint store: %s", catalog.store.url)
    return host


def serve_in_process(store: str = "", settings: CheckpointSettings | None = None,
                     timeout: float = 30.0) -> CheckpointClient:
    """Start a checkpoint service inside this process on a free loopback port, and a client of it.

    For tests and notebooks; the service stops when the client closes.

    Args:
        store: the store URL (default: the settings' store, else ./rewind-data).
        settings: the service's settings (host and port are replaced).
        timeout: the client's deadline per call, seconds.
    """
    settings = (settings or CheckpointSettings()).replace(host="127.0.0.1", port=0, store=store or None)
    host = serve(settings)
    return CheckpointClient(host.address, timeout=timeout, max_message_bytes=settings.max_message_bytes,
                            on_close=lambda: host.stop(grace_s=1.0))
