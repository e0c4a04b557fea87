"""Weights by version: what the learner publishes for its collectors, and GetWeights' chunks.

Every `publish_weights_every` gradient updates (and once when the loop starts,
so that a resumed run offers the version it restored), the loop, at a boundary
(never in the middle of an update), encodes the policy as `policy.safetensors`,
the very file a checkpoint holds, and posts it here under its version: the
updates made so far, which a resume restores, so versions only grow across a
run's life. GetWeights streams the newest post once its version reaches what
the caller asks for, in chunks of at most CHUNK_BYTES, under any message limit
whatever the model's size.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from rewind.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable
from rewind.trainer.v1 import trainer_pb2

CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Published:
    """One version of the weights."""

    version: int
    step: int
    data: bytes
    sha256: str


class WeightsBoard:
    """The newest published weights, and the calls waiting for a newer version.

    Args:
        generation: the run's generation, told with every chunk.
        enabled: whether this run publishes at all (publish_weights_every > 0).
        routing_seed: the run's routing seed, told to collectors for their routing keys.
        live_shards: the places of the shards the learner samples now (a sharded run), told likewise.
    """

    def __init__(self, generation: int, enabled: bool, routing_seed: int = 0,
                 live_shards: Callable[[], list[int]] = list) -> None:
        self.generation, self.enabled, self.routing_seed = generation, enabled, routing_seed
        self.live_shards = live_shards  # the shards the learner samples now, told as each call is answered
        self.latest: Published | None = None
        self.closed = False
        self._changed = threading.Condition()

    def publish(self, version: int, step: int, data: bytes) -> Published:
        published = Published(version, step, data, hashlib.sha256(data).hexdigest())
        with self._changed:
            self.latest = published
            self._changed.notify_all()
        return published

    def close(self) -> None:
        """The run is ending: waiting calls end now (UNAVAILABLE), not at their deadline."""
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait(self, min_version: int, timeout_s: float | None) -> Published:
        """The newest weights once their version is at least `min_version`.

        Raises:
            InvalidArgument: a negative min_version.
            FailedPrecondition: this run publishes no weights.
            DeadlineExceeded: none that new within `timeout_s`, naming the newest there is.
            Unavailable: the run ended first.
        """
        if min_version < 0:
            raise InvalidArgument(f"min_version: {min_version} is negative; give 0 for whatever is published")
        if not self.enabled:
            raise FailedPrecondition("min_version: this trainer publishes no weights; start it with "
                                     "--publish-weights-every N (updates between versions)")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while self.latest is None or self.latest.version < min_version:
                if self.closed:
                    raise Unavailable("the trainer is stopping: no newer weights will be published")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    newest = "none yet" if self.latest is None else f"version {self.latest.version}"
                    raise DeadlineExceeded(f"min_version: no weights of version {min_version} or newer were "
                                           f"published in time (the newest: {newest})")
                self._changed.wait(left)
            return self.latest


def chunks(published: Published, generation: int, routing_seed: int = 0,
           live_shards: Sequence[int] = ()) -> Iterator[trainer_pb2.GetWeightsResponse]:
    """GetWeights' messages for one version: its file in consecutive pieces of at most CHUNK_BYTES."""
    size = len(published.data)
    for offset in range(0, max(size, 1), CHUNK_BYTES):
        message = trainer_pb2.GetWeightsResponse(version=published.version, generation=generation,
                                                 chunk=published.data[offset:offset + CHUNK_BYTES], offset=offset)
        if offset == 0:
            message.step, message.total_bytes, message.sha256 = published.step, size, published.sha256
            message.routing_seed = routing_seed
            message.live_shards.extend(live_shards)
        yield message


class Publisher:
    """Posts the policy every `every` updates, at the loop's boundaries.

    Args:
        board: where versions go.
        every: updates between versions.
        encode: returns (updates made, step, policy.safetensors bytes) of the loop as it is now.
    """

    def __init__(self, board: WeightsBoard, every: int, encode: Callable[[], tuple[int, int, bytes]]) -> None:
        self.board, self.every, self.encode = board, every, encode
        self.last = -1

    def on_boundary(self, updates: int) -> None:
        """Publish when `every` updates passed since the last version (or none was published yet)."""
        if self.last >= 0 and updates - self.last < self.every:
            return
        version, step, data = self.encode()
        self.board.publish(version, step, data)
        self.last = version
