"""TrainerClient: ask a running trainer for its status, a checkpoint, or a stop.

    from rewind.trainer_client import TrainerClient
    trainer = TrainerClient("127.0.0.1:50053")
    print(trainer.status().step)
    step, path = trainer.checkpoint(wait=True)
    weights = trainer.weights(min_version=1000)   # a learner's published policy.safetensors, version >= 1000
    trainer.stop()
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import grpc

from rewind import addresses
from rewind.errors import DataLoss
from rewind.security import ClientSecurity
from rewind.service_client import ServiceClient
from rewind.trainer.v1 import trainer_pb2, trainer_pb2_grpc

DEFAULT_ADDRESS = addresses.TRAINER_ADDRESS


@dataclass(frozen=True)
class Weights:
    """A version of a learner's weights: policy.safetensors' bytes, as a checkpoint holds them."""

    version: int       # the learner's gradient updates when it published them
    generation: int    # the run's generation then
    step: int          # the agent step then
    data: bytes
    routing_seed: int = 0  # the run's routing seed, for a collector's routing keys
    live_shards: tuple[int, ...] = ()  # the shards the learner samples now, by place (empty: one buffer)

    def tensors(self) -> dict:
        """The policy's tensors (safetensors' load)."""
        from safetensors.torch import load

        return load(self.data)


class TrainerClient(ServiceClient):
    """Client of a trainer's rewind.trainer.v1 service.

    Args:
        address: "host:port" of the trainer service.
        timeout: deadline in seconds for each call.
        security: token and TLS (default: from REWIND_TOKEN_FILE and REWIND_TLS_*).
    """

    SERVICE = "trainer"

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float = 30.0,
                 security: ClientSecurity | None = None) -> None:
        super().__init__(address, timeout=timeout, security=security)
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def status(self) -> trainer_pb2.TrainerStatus:
        """Step, episode, phase, recent returns, losses and the last checkpoint."""
        return self._call(self._stub.GetStatus, trainer_pb2.GetStatusRequest()).status

    def checkpoint(self, wait: bool = True, timeout: float = 600.0) -> tuple[int, str]:
        """Checkpoint at the next boundary; returns (step, path), the path once committed if `wait`.

        Raises:
            FailedPrecondition: the trainer is not training (yet), or stopping.
            DeadlineExceeded: not committed within `timeout` (it goes on in the background).
        """
        response = self._call(self._stub.CreateCheckpoint, trainer_pb2.CreateCheckpointRequest(wait=wait),
                              timeout=timeout if wait else self.timeout)
        return response.step, response.path

    def stop(self) -> int:
        """Ask the trainer to checkpoint and exit; returns the step it was at."""
        return self._call(self._stub.Stop, trainer_pb2.StopRequest()).step

    def weights(self, min_version: int = 0, timeout: float | None = None) -> Weights:
        """The learner's newest published weights once their version is at least `min_version`.

        Args:
            min_version: the oldest version to take (0: whatever is published).
            timeout: how long to wait for it, and to receive it (default: the client's timeout).

        Raises:
            DeadlineExceeded: none that new was published in time.
            FailedPrecondition: the trainer publishes no weights (--publish-weights-every).
            DataLoss: the bytes received do not match the size and sha256 the trainer sent.
        """
        request = trainer_pb2.GetWeightsRequest(min_version=min_version)
        first, parts = None, []
        try:
            for message in self._stub.GetWeights(request, timeout=timeout or self.timeout):
                first = first or message
                if message.offset != sum(len(p) for p in parts):
                    raise DataLoss(f"weights: a chunk at offset {message.offset} arrived out of order")
                parts.append(message.chunk)
        except grpc.RpcError as exc:
            raise self._error(exc) from None
        data = b"".join(parts)
        if first is None or len(data) != first.total_bytes or hashlib.sha256(data).hexdigest() != first.sha256:
            raise DataLoss(f"weights: received {len(data)} bytes that do not match the "
                           f"{first.total_bytes if first else '?'} bytes and sha256 the trainer sent")
        return Weights(first.version, first.generation, first.step, data, first.routing_seed,
                       tuple(first.live_shards))
