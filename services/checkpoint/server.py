"""serve(): run the checkpoint service.

    config = CheckpointConfig(store="s3://my-bucket/rewind", port=50052)
    host = serve(config)          # returns once SERVING
    host.wait()                   # until SIGTERM (or host.stop())
"""

from __future__ import annotations

import logging
import threading

from rewind.checkpoint.v1 import checkpoint_pb2, checkpoint_pb2_grpc
from rewind.errors import RewindError
from rewind.serving import ServiceBinding, ServiceHost
from rewind_checkpoint.catalog import Catalog
from rewind_checkpoint.config import CheckpointConfig
from rewind_checkpoint.servicer import CheckpointServicer
from rewind_checkpoint.store import open_store

log = logging.getLogger(__name__)

SERVICE_NAME = checkpoint_pb2.DESCRIPTOR.services_by_name["CheckpointService"].full_name


def build(config: CheckpointConfig) -> tuple[ServiceHost, Catalog]:
    """Open the store and create an unstarted host."""
    store = open_store(config.store_url, timeout_s=config.store_timeout_s, retries=config.store_retries,
                       part_bytes=config.part_mb * 1024 * 1024)
    catalog = Catalog(store, staging_max_age_s=config.staging_max_age_s)
    servicer = CheckpointServicer(catalog, buffer_timeout_s=config.buffer_timeout_s)
    host = ServiceHost(
        [ServiceBinding(SERVICE_NAME, servicer, checkpoint_pb2_grpc.add_CheckpointServiceServicer_to_server)],
        host=config.host,
        port=config.port,
        max_message_bytes=config.max_message_bytes,
        workers=config.workers,
        grace_s=config.grace_s,
    )
    return host, catalog


def _clean_staging(catalog: Catalog) -> None:
    try:
        catalog.clean_staging()
    except RewindError as exc:
        log.warning("staging clean-up skipped: %s", exc)


def _sweep_staging(catalog: Catalog, host: ServiceHost, interval_s: float) -> None:
    """Remove stale staging every interval, until the host stops."""
    while not host.stopped.wait(interval_s):
        _clean_staging(catalog)


def serve(config: CheckpointConfig, *, handle_signals: bool = False) -> ServiceHost:
    """Start the checkpoint service and return its host once it reports SERVING.

    Args:
        config: the service configuration.
        handle_signals: drain on SIGTERM/SIGINT (only from the main thread).

    Raises:
        Unavailable: the store cannot be reached, or the port cannot be bound.
        FailedPrecondition: the store refuses us (missing bucket, bad credentials).
    """
    host, catalog = build(config)
    catalog.store.check()
    # Leftovers of a crashed predecessor go before we accept new uploads.
    _clean_staging(catalog)
    if handle_signals:
        host.install_signal_handlers()
    host.start()
    threading.Thread(target=_sweep_staging, args=(catalog, host, config.clean_interval_s),
                     name="rewind-staging-sweep", daemon=True).start()
    log.info("checkpoint store: %s", catalog.store.url)
    return host
