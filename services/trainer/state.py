"""LoopState: where the online loop is, besides the agent, the RNGs, the env and the buffers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

RECENT = 10             # training returns kept for status and the checkpoint


@dataclass
class LoopState:
    """Where the loop is: everything besides the agent, RNGs, env and buffers."""

    step: int = 0
    episode: int = 0                   # training episodes added to `buffer`
    test_episodes: int = 0             # evaluation episodes added to `test_buffer`
    evaluations: int = 0
    last_eval_step: int = -1
    episode_start: int = 0             # step at which the current episode began
    done: bool = True                  # the current episode has ended (or none began)
    unadded: bool = False              # ... and is not yet in the buffer
    eval_next: bool = False
    owed: int = 0                      # updates due before the next environment step
    eval_return: float = math.nan
    episode_return: float = math.nan
    recent_returns: list[float] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
