"""MetricsLog: metrics.csv, one row per training episode and per evaluation."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path


class MetricsLog:
    """Appends rows to metrics.csv (one file per run, columns fixed at creation).

    Args:
        out_dir: the run's folder.
        on_row: also given each row as written (column -> text; "" when empty), e.g. TensorBoard's.
    """

    COLUMNS = ("step", "episode", "kind", "episode_return", "episode_steps", "steps_per_s", "consistency_loss",
               "reward_loss", "value_loss", "pi_loss", "total_loss", "grad_norm", "pi_entropy", "pi_scale")

    def __init__(self, out_dir: Path, on_row: Callable[[dict[str, str]], None] | None = None) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.on_row = on_row
        self.path = out_dir / "metrics.csv"
        if not self.path.exists():
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.COLUMNS)

    def write(self, **row) -> None:
        values = {c: _fmt(row.get(c, "")) for c in self.COLUMNS}
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(values.values())
        if self.on_row is not None:
            self.on_row(values)

    def truncate_after(self, step: int, again: tuple[str, ...] = ()) -> None:
        """Drop rows past `step`: a resumed run rewrites what came after its checkpoint.

        Args:
            step: the checkpoint's step.
            again: kinds ("train", "eval") whose row at `step` came after the checkpoint (its
                state has the episode still to add, the evaluation still to run): dropped too,
                since the resumed run writes them again.
        """
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = [rows[0]] + [r for r in rows[1:]
                            if r and (int(r[0]) < step or int(r[0]) == step and r[2] not in again)]
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerows(kept)


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
