"""MetricsLog: metrics.csv, one row per training episode and per evaluation."""

from __future__ import annotations

import csv
from pathlib import Path


class MetricsLog:
    """Appends rows to metrics.csv (one file per run, columns fixed at creation)."""

    COLUMNS = ("step", "episode", "kind", "episode_return", "episode_steps", "steps_per_s", "consistency_loss",
               "reward_loss", "value_loss", "pi_loss", "total_loss", "grad_norm", "pi_entropy", "pi_scale")

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.csv"
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.COLUMNS)

    def write(self, **row) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, "")) for c in self.COLUMNS])

    def truncate_after(self, step: int) -> None:
        """Drop rows past `step`: a resumed run rewrites what came after its checkpoint."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
