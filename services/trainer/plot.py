"""The learning curve: metrics.csv drawn as learning_curve.png beside it."""

from __future__ import annotations

import csv
from pathlib import Path


def read_curves(metrics_csv: Path) -> dict[str, tuple[list[int], list[float]]]:
    """(steps, returns) for each kind of row ("train", "eval")."""
    curves: dict[str, tuple[list[int], list[float]]] = {}
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("episode_return"):
                steps, returns = curves.setdefault(row["kind"], ([], []))
                steps.append(int(row["step"]))
                returns.append(float(row["episode_return"]))
    return curves


def plot_learning_curve(metrics_csv: Path, title: str, action_repeat: int = 1) -> Path:
    """Write learning_curve.png next to metrics_csv and return its path.

    metrics.csv counts agent steps; the x axis shows environment steps (x action_repeat),
    the unit papers and benchmark targets use.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in containers
    import matplotlib.pyplot as plt

    curves = {kind: ([step * action_repeat for step in steps], returns)
              for kind, (steps, returns) in read_curves(metrics_csv).items()}
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if "train" in curves:
        ax.plot(*curves["train"], color="tab:blue", alpha=0.35, linewidth=1, label="training episode")
    if "eval" in curves:
        ax.plot(*curves["eval"], color="tab:orange", marker="o", linewidth=2, label="evaluation (mean)")
    ax.set_xlabel("environment step" + (f" (action repeat {action_repeat})" if action_repeat > 1 else ""))
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right")
    out = metrics_csv.with_name("learning_curve.png")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
