"""The learning curve as inline SVG, drawn on the server from a run's metrics rows.

Evaluation and training episode returns against environment steps, with axes,
ticks and a legend. No script and no external asset: the page works offline
and shows the curve with JavaScript off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from markupsafe import Markup, escape

WIDTH, HEIGHT = 880, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 34, 44
MAX_POINTS = 2000  # per series; a longer series is thinned evenly (its first and last points stay)
SERIES = (("eval", "evaluation return", "series-eval"), ("train", "training episode return", "series-train"))


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` round tick values covering [low, high] (1, 2 or 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    count = math.ceil((high - first) / step - 1e-9)  # ticks past the first: the last one is >= high
    return [round(first + i * step, 12) for i in range(count + 1)]


def _label(value: float) -> str:
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = (len(points) - 1) / (MAX_POINTS - 1)
    return [points[round(i * stride)] for i in range(MAX_POINTS)]


def series_of(rows: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """kind -> [(env_step, episode_return)] of the rows that have both, in step order."""
    found: dict[str, list[tuple[float, float]]] = {kind: [] for kind, _, _ in SERIES}
    for row in rows:
        x, y = row.get("env_step"), row.get("episode_return")
        if row.get("kind") in found and isinstance(x, int | float) and isinstance(y, int | float):
            found[row["kind"]].append((float(x), float(y)))
    return {kind: sorted(points, key=lambda p: p[0]) for kind, points in found.items()}


def learning_curve(rows: Sequence[dict[str, Any]]) -> Markup:
    """An <svg> of the rows' returns against env_step; a short note when there is nothing to draw."""
    series = {kind: _thin(points) for kind, points in series_of(rows).items()}
    every = [p for points in series.values() for p in points]
    if not every:
        return Markup('<p class="empty" id="curve-empty">No metrics yet: the trainer uploads metrics.csv '
                      "with each checkpoint and every heartbeat.</p>")
    xs, ys = [p[0] for p in every], [p[1] for p in every]
    x_ticks = nice_ticks(min(0.0, min(xs)), max(xs) if max(xs) > 0 else 1.0, count=8)  # the wider axis
    y_low, y_high = min(ys), max(ys)
    if y_high == y_low:
        y_low, y_high = y_low - 1, y_high + 1
    y_ticks = nice_ticks(y_low, y_high)
    box = (x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1])
    parts = [f'<svg id="learning-curve" class="curve" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="learning curve" xmlns="http://www.w3.org/2000/svg">']
    parts += _axes(x_ticks, y_ticks, box)
    for kind, name, css in SERIES:
        if series[kind]:
            parts.append(_path(series[kind], box, kind, css, name))
    parts += _legend([(name, css) for kind, name, css in SERIES if series[kind]])
    parts.append("</svg>")
    return Markup("".join(parts))


def _scale(x: float, y: float, box: tuple[float, float, float, float]) -> tuple[float, float]:
    x0, x1, y0, y1 = box
    px = LEFT + (x - x0) / ((x1 - x0) or 1) * (WIDTH - LEFT - RIGHT)
    py = HEIGHT - BOTTOM - (y - y0) / ((y1 - y0) or 1) * (HEIGHT - TOP - BOTTOM)
    return px, py


def _axes(x_ticks: list[float], y_ticks: list[float], box: tuple[float, float, float, float]) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    out = [f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{bottom - TOP}"/>']
    for t in x_ticks:
        px, _ = _scale(t, box[2], box)
        out.append(f'<line class="grid" x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{bottom}"/>'
                   f'<text class="tick" x="{px:.1f}" y="{bottom + 16}" text-anchor="middle">{_label(t)}</text>')
    for t in y_ticks:
        _, py = _scale(box[0], t, box)
        out.append(f'<line class="grid" x1="{LEFT}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(f'<line class="axis" x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
               f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}"/>'
               f'<text class="axis-title" x="{(LEFT + right) / 2:.0f}" y="{HEIGHT - 6}" '
               f'text-anchor="middle">environment steps</text>'
               f'<text class="axis-title" transform="translate(14 {(TOP + bottom) / 2:.0f}) rotate(-90)" '
               f'text-anchor="middle">episode return</text>')
    return out


def _path(points: list[tuple[float, float]], box: tuple[float, float, float, float], kind: str, css: str,
          name: str) -> str:
    coords = [_scale(x, y, box) for x, y in points]
    d = " ".join(f"{'M' if i == 0 else 'L'}{px:.1f},{py:.1f}" for i, (px, py) in enumerate(coords))
    dots = ""
    if kind == "eval" and len(coords) <= 200:  # evaluations are few; a dot marks each
        dots = "".join(f'<circle class="{css}" cx="{px:.1f}" cy="{py:.1f}" r="3"/>' for px, py in coords)
    return (f'<g class="series" data-kind="{kind}"><title>{escape(name)}</title>'
            f'<path class="{css}" data-kind="{kind}" data-points="{len(coords)}" d="{d}"/>{dots}</g>')


def _legend(entries: list[tuple[str, str]]) -> list[str]:
    """One row above the plot, so that it never hides a curve."""
    out = ['<g class="legend">']
    x = LEFT
    for name, css in entries:
        out.append(f'<line class="{css}" x1="{x}" y1="{TOP - 14}" x2="{x + 24}" y2="{TOP - 14}"/>'
                   f'<text class="legend-label" x="{x + 30}" y="{TOP - 10}">{escape(name)}</text>')
        x += 40 + 7 * len(name)  # about the label's width at 12px
    out.append("</g>")
    return out
