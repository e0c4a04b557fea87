"""BufferRegistry: the named buffers of one service."""

from __future__ import annotations

import threading

from rewind.errors import AlreadyExists, NotFound
from rewind_buffer.episode_buffer import EpisodeBuffer
from rewind_buffer.settings import BufferSettings, check_buffer_name


class BufferRegistry:
    """Named EpisodeBuffers, created from shared defaults."""

    def __init__(self, defaults: BufferSettings, *, storage_device: str = "auto", seed: int = 1) -> None:
        self.defaults = defaults
        self.storage_device = storage_device
        self.seed = seed
        self._buffers: dict[str, EpisodeBuffer] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return list(self._buffers)

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
        """Create a buffer; raises AlreadyExists if the name is taken."""
        check_buffer_name(name)
        with self._lock:
            if name in self._buffers:
                raise AlreadyExists(f"buffer: {name!r} exists already")
            buffer = EpisodeBuffer(
                name, settings or self.defaults, storage_device=self.storage_device, seed=self.seed
            )
            self._buffers[name] = buffer
            return buffer

    def reset(self, name: str, settings: BufferSettings | None = None) -> tuple[EpisodeBuffer, int]:
        """Replace `name` (or create it) with an empty buffer; returns it and the episodes dropped."""
        check_buffer_name(name)
        buffer = EpisodeBuffer(name, settings or self.defaults, storage_device=self.storage_device, seed=self.seed)
        with self._lock:
            old = self._buffers.get(name)
            self._buffers[name] = buffer
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
        return buffer.num_eps

    def put(self, buffer: EpisodeBuffer) -> None:
        """Install `buffer` under its name, replacing any buffer of that name."""
        check_buffer_name(buffer.name)
        with self._lock:
            self._buffers[buffer.name] = buffer
