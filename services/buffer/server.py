"""Running the buffer service: `serve()` in a process of its own, `serve_in_process()` inside yours.

    host = serve(BufferServiceSettings(port=50051))   # returns once SERVING
    host.wait()                                       # until SIGTERM (or host.stop())

    with serve_in_process() as buffer:                # a BufferClient; closing it stops the service
        buffer.add(episode)
"""

from __future__ import annotations

from collections.abc import Collection

from rewind import BufferClient
from rewind.buffer.v1 import buffer_pb2, buffer_pb2_grpc
from rewind_buffer.allocator import fix_malloc_thresholds
from rewind_buffer.captures import CaptureStore
from rewind_buffer.metrics import BufferCollector
from rewind_buffer.registry import BufferRegistry
from rewind_buffer.servicer import BufferServicer
from rewind_buffer.settings import BufferServiceSettings
from rewind_runtime.host import ServiceBinding, ServiceHost
from rewind_runtime.threads import configure_torch_threads

SERVICE_NAME = buffer_pb2.DESCRIPTOR.services_by_name["BufferService"].full_name
# A read token may call these; the rest need a write token. Sampling is a write: it moves the sampler's
# generator (and the rate limiter), so a monitor that samples would change what a training run draws next.
READ_METHODS = ("ListBuffers", "GetStats", "Snapshot", "SnapshotBlocks")
# A collector adds episodes, and nothing else: it cannot sample, reset, delete or restore a buffer.
COLLECTOR_METHODS = ("AddEpisode", "LoadEpisodes")
# The data path: logged per call at debug level only.
QUIET_METHODS = ("AddEpisode", "LoadEpisodes", "Sample", "SampleStream", "SampleSequences")


def build(settings: BufferServiceSettings, explicit: Collection[str] = ()) -> tuple[ServiceHost, BufferRegistry]:
    """Create the registry (with the configured buffers) and an unstarted host."""
    registry = BufferRegistry(settings.buffer_defaults, storage_device=settings.storage_device, seed=settings.seed,
                              limits=settings.limits)
    for name in settings.buffers:
        registry.create(name)
    servicer = BufferServicer(registry, CaptureStore(settings.max_captures, settings.capture_ttl_s,
                                                     max_copy_bytes=settings.max_capture_copy_mb * 2**20),
                              block_bytes=settings.snapshot_block_mb * 2**20,
                              store_endpoints=settings.store_endpoints, store_timeout_s=settings.store_timeout_s,
                              limiter_max_wait_s=settings.limiter_max_wait_s,
                              limiter_max_waiting=settings.limiter_waiting_slots)
    binding = ServiceBinding(SERVICE_NAME, servicer, buffer_pb2_grpc.add_BufferServiceServicer_to_server,
                             read_methods=READ_METHODS, collector_methods=COLLECTOR_METHODS,
                             quiet_methods=QUIET_METHODS, on_drain=registry.close)
    host = ServiceHost.from_settings([binding], settings, explicit)
    host.metrics.register(BufferCollector(registry))
    return host, registry


def serve(settings: BufferServiceSettings, *, handle_signals: bool = False,
          explicit: Collection[str] = ()) -> ServiceHost:
    """Start the buffer service and return its host once it reports SERVING.

    Args:
        settings: the service's settings.
        handle_signals: drain on SIGTERM/SIGINT (only from the main thread).
        explicit: the settings given by a flag, a variable or a file; their ports never fall back to free ones.
    """
    # 1 by default: small gathers gain nothing from intra-op threads, which
    # would only contend with the gRPC threads for the same cores.
    configure_torch_threads(settings.torch_threads, "buffer")
    # Else RSS grows by a storage copy per capture until every arena holds one (rewind_buffer.allocator).
    fix_malloc_thresholds()
    host, _ = build(settings, explicit)
    if handle_signals:
        host.install_signal_handlers()
    host.start()
    return host


def serve_in_process(settings: BufferServiceSettings | None = None, buffer: str = "buffer",
                     timeout: float = 30.0) -> BufferClient:
    """Start a buffer service inside this process on a free loopback port, and a client of it.

    For tests and notebooks; the service stops when the client closes.

    Args:
        settings: the service's settings (host and port are replaced).
        buffer: the buffer the client uses.
        timeout: the client's deadline per call, seconds.
    """
    settings = (settings or BufferServiceSettings()).replace(host="127.0.0.1", port=0)
    host = serve(settings)
    return BufferClient(host.address, buffer, timeout=timeout, max_message_bytes=settings.max_message_bytes,
                        on_close=lambda: host.stop(grace_s=1.0))
