"""The global random generators a run depends on, captured and restored for exact resume."""

from __future__ import annotations

import random

import numpy as np
import torch


def capture_rngs() -> dict:
    """torch's, numpy's and Python's global generators (torch's drives dropout)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    rngs = {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rngs["cuda"] = torch.cuda.get_rng_state_all()
    return rngs


def restore_rngs(rngs: dict) -> None:
    torch.set_rng_state(rngs["torch"])
    kind, keys, pos, has_gauss, cached = rngs["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = rngs["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in rngs and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rngs["cuda"])
