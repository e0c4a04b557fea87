"""How many CPU threads torch may use in a process."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def set_torch_threads(requested: int, who: str) -> int:
    """Set torch's intra-op threads to `requested` (0 keeps torch's default); returns the number in use."""
    import torch

    if requested:
        torch.set_num_threads(requested)
    threads = torch.get_num_threads()
    log.info("%s: torch uses %d intra-op thread(s)%s", who, threads, "" if requested else " (torch's default)")
    return threads
