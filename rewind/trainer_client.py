"""TrainerClient: ask a running trainer for its status, a checkpoint, or a stop.

    from rewind.trainer_client import TrainerClient
    trainer = TrainerClient("127.0.0.1:50053")
    print(trainer.status().step)
    step, path = trainer.checkpoint(wait=True)
    trainer.stop()
"""

from __future__ import annotations

from rewind import addresses
from rewind.security import ClientSecurity
from rewind.service_client import ServiceClient
from rewind.trainer.v1 import trainer_pb2, trainer_pb2_grpc

DEFAULT_ADDRESS = addresses.TRAINER_ADDRESS


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
