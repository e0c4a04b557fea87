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


def plot_learning_curve(metrics_csv: Path, title: str) -> Path:
    """Write learning_curve.png next to metrics_csv and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and in containers
    import matplotlib.pyplot as plt

    curves = read_curves(metrics_csv)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if "train" in curves:
        ax.plot(*curves["train"], color="tab:blue", alpha=0.35, linewidth=1, label="training episode")
    if "eval" in curves:
        ax.plot(*curves["eval"], color="tab:orange", marker="o", linewidth=2, label="evaluation (mean)")
    ax.set_xlabel("environment step")
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
