"""serve(): run the buffer service.

    config = load_config("buffer.toml").replace(port=50051)
    host = serve(config)          # returns once SERVING
    host.wait()                   # until SIGTERM (or host.stop())
"""

from __future__ import annotations

import logging

import torch

from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind.serving import ServiceBinding, ServiceHost
from rewind_buffer.config import ServiceConfig
from rewind_buffer.registry import BufferRegistry
from rewind_buffer.servicer import BufferServicer

log = logging.getLogger(__name__)

SERVICE_NAME = buffer_pb2.DESCRIPTOR.services_by_name["BufferService"].full_name


def build(config: ServiceConfig) -> tuple[ServiceHost, BufferRegistry]:
    """Create the registry (with the configured buffers) and an unstarted host."""
    registry = BufferRegistry(config.settings, storage_device=config.storage_device, seed=config.seed)
    for name in config.buffers:
        registry.create(name)
    host = ServiceHost(
        [ServiceBinding(SERVICE_NAME, BufferServicer(registry), buffer_pb2_grpc.add_BufferServiceServicer_to_server)],
        host=config.host,
        port=config.port,
        max_message_bytes=config.max_message_bytes,
        workers=config.workers,
        grace_s=config.grace_s,
    )
    return host, registry


def serve(config: ServiceConfig, *, handle_signals: bool = False) -> ServiceHost:
    """Start the buffer service and return its host once it reports SERVING.

    Args:
        config: the service configuration.
        handle_signals: drain on SIGTERM/SIGINT (only from the main thread).
    """
    if config.torch_threads:
        # Small gathers gain nothing from intra-op threads, which would only
        # contend with the gRPC threads for the same cores.
        torch.set_num_threads(config.torch_threads)
    host, _ = build(config)
    if handle_signals:
        host.install_signal_handlers()
    host.start()
    return host
