"""Rewind's buffer service: a replay buffer for TD-MPC2-style agents, over gRPC.

Installed as the `rewind_buffer` package. Modules, one concern each:
`config` (settings and the TOML file), `schema` (episode validation),
`writer` (whole-episode placement and FIFO eviction), `episode_buffer` (one
named buffer on torchrl), `snapshot` (the snapshot blob format), `servicer`
(gRPC glue) and `server` (`serve()`).
"""

from rewind_buffer.config import BufferSettings, ServiceConfig
from rewind_buffer.episode_buffer import Batch, EpisodeBuffer

__all__ = ["Batch", "BufferSettings", "EpisodeBuffer", "ServiceConfig"]
