"""BufferRegistry: the named buffers of one service, within the service's budget.

Three limits hold for all buffers together (rewind_buffer.settings.Limits):
the number of buffers, the transitions they reserve (the sum of their
buffer_size, counted when a buffer is created, reset or restored) and the
storage they allocate (counted at a buffer's first episode, when its schema
fixes the bytes per transition, or when a snapshot is restored). Replacing a
buffer (ResetBuffer, Restore) counts the new one instead of the old one.
"""

from __future__ import annotations

import threading

from rewind.errors import AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted, Unavailable
from rewind_buffer.episode_buffer import EpisodeBuffer
from rewind_buffer.settings import BufferSettings, Limits, check_buffer_name


class BufferRegistry:
    """Named EpisodeBuffers, created from shared defaults."""

    def __init__(self, defaults: BufferSettings, *, storage_device: str = "auto", seed: int = 1,
                 limits: Limits | None = None) -> None:
        self.defaults = defaults
        self.storage_device = storage_device
        self.seed = seed
        self.limits = limits or Limits()
        self._buffers: dict[str, EpisodeBuffer] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._buffers)

    def buffers(self) -> list[EpisodeBuffer]:
        """Every buffer, as of now (one consistent list, even while others are created or deleted)."""
        with self._lock:
            return list(self._buffers.values())

    def get(self, name: str) -> EpisodeBuffer:
        """The buffer called `name`.

        Raises:
            InvalidArgument: the name is empty or malformed.
            NotFound: no such buffer.
        """
        check_buffer_name(name)
        with self._lock:
            buffer = self._buffers.get(name)
            if buffer is None:
                known = ", ".join(self._buffers) or "none"
                raise NotFound(f"buffer: no buffer named {name!r} (existing: {known}); create it with CreateBuffer")
            return buffer

    def create(self, name: str, settings: BufferSettings | None = None) -> EpisodeBuffer:
        """Create a buffer.

        Raises:
            AlreadyExists: the name is taken.
            ResourceExhausted: the service's budget has no room for it.
        """
        check_buffer_name(name)
        buffer = self._new(name, settings or self.defaults)
        with self._lock:
            if name in self._buffers:
                raise AlreadyExists(f"buffer: {name!r} exists already")
            self._admit(name, buffer.capacity)
            self._buffers[name] = buffer
        return buffer

    def reset(self, name: str, settings: BufferSettings | None = None) -> tuple[EpisodeBuffer, int]:
        """Replace `name` (or create it) with an empty buffer; returns it and the episodes dropped.

        Raises:
            ResourceExhausted: the budget has no room for the new settings; the old buffer stays.
        """
        check_buffer_name(name)
        buffer = self._new(name, settings or self.defaults)
        with self._lock:
            self._admit(name, buffer.capacity)
            old = self._buffers.get(name)
            self._buffers[name] = buffer
        _retire(old, "reset")
        return buffer, (old.num_eps if old is not None else 0)

    def delete(self, name: str) -> int:
        """Remove `name`; returns the episodes it held.

        Raises:
            NotFound: no such buffer.
        """
        buffer = self.get(name)
        with self._lock:
            if self._buffers.get(name) is buffer:
                del self._buffers[name]
        _retire(buffer, "deleted")
        return buffer.num_eps

    def admit(self, name: str, settings: BufferSettings, storage_bytes: int = 0) -> None:
        """Check that a buffer `name` with these settings and storage fits the budget (replacing any of that name).

        Raises:
            ResourceExhausted: naming the limit and what is left of it.
        """
        with self._lock:
            self._admit(name, settings.buffer_size, storage_bytes)

    def put(self, buffer: EpisodeBuffer) -> None:
        """Install `buffer` under its name, replacing any buffer of that name.

        Raises:
            ResourceExhausted: the budget has no room for it (checked again: others may have taken it meanwhile).
        """
        check_buffer_name(buffer.name)
        with self._lock:
            self._admit(buffer.name, buffer.capacity, buffer.reserved_bytes)
            old = self._buffers.get(buffer.name)
            self._buffers[buffer.name] = buffer
        _retire(old, "restored over")

    def close(self) -> None:
        """Wake every call waiting for a rate limiter: the service is stopping."""
        for buffer in self.buffers():
            buffer.close(Unavailable("the buffer service is stopping; retry against its successor"))

    def reserve_storage(self, buffer: EpisodeBuffer, nbytes: int) -> None:
        """Count `nbytes` of storage for `buffer` (it is about to allocate them), or refuse.

        Raises:
            ResourceExhausted: the storage budget has no room; nothing is counted.
        """
        with self._lock:
            self._check_storage(buffer.name, nbytes)
            buffer.reserved_bytes = nbytes

    def _new(self, name: str, settings: BufferSettings) -> EpisodeBuffer:
        return EpisodeBuffer(name, settings, storage_device=self.storage_device, seed=self.seed,
                             reserve_storage=self.reserve_storage)

    def _admit(self, name: str, buffer_size: int, storage_bytes: int = 0) -> None:
        """The budget check, under the lock; the buffer called `name` (if any) is the one being replaced."""
        others = [b for key, b in self._buffers.items() if key != name]
        if name not in self._buffers and len(others) >= self.limits.max_buffers:
            raise ResourceExhausted(f"buffer: the service holds its maximum of {self.limits.max_buffers} buffers "
                                    f"(max_buffers); delete one before adding {name!r}")
        left = self.limits.max_transitions - sum(b.capacity for b in others)
        if buffer_size > left:
            raise ResourceExhausted(
                f"buffer_size: {buffer_size:,} transitions exceed the {max(left, 0):,} left of the service's "
                f"budget (max_transitions={self.limits.max_transitions:,}, shared by all buffers); lower "
                "buffer_size or delete a buffer")
        self._check_storage(name, storage_bytes)

    def _check_storage(self, name: str, nbytes: int) -> None:
        limit = self.limits.max_storage_bytes
        if not limit or not nbytes:
            return
        left = limit - sum(b.reserved_bytes for key, b in self._buffers.items() if key != name)
        if nbytes > left:
            raise ResourceExhausted(
                f"buffer_size: its storage needs {nbytes / 2**20:,.1f} MiB but {max(left, 0) / 2**20:,.1f} MiB are "
                f"left of the service's budget (max_storage_mb={limit // 2**20:,}, shared by all buffers); lower "
                "buffer_size (ResetBuffer) or delete a buffer")


BUFFER_REPLACED = "BUFFER_REPLACED"  # the reason of a call that waited on a buffer since reset or restored over


def _retire(buffer: EpisodeBuffer | None, how: str) -> None:
    """Calls still waiting on a replaced buffer's limiter end now, not at their deadline."""
    if buffer is not None:
        buffer.close(FailedPrecondition(f"buffer {buffer.name!r} was {how} while this call waited for its rate "
                                        "limiter; nothing was stored or sampled", reason=BUFFER_REPLACED))
