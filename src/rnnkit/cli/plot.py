"""The loss curve next to the checkpoints: ``loss.png`` with matplotlib, else ``loss.svg`` drawn by rnnkit."""

from __future__ import annotations

import math
import os

from ..describe.drawing import Canvas, has_matplotlib

__all__ = ["write_loss_curve"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo or 1.0
    step = 10 ** math.floor(math.log10(span / n))
    for m in (1, 2, 5, 10):
        if span / (step * m) <= n:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + k * step for k in range(int((hi - first) / step) + 1)]


def write_loss_curve(run_dir: str, train: list[list[float]], val: list[list[float]], ylabel: str) -> str:
    """Plot ``[[step, value], ...]`` series; returns the file written (PNG if matplotlib is installed)."""
    w, h, left, right, top, bottom = 720, 420, 70, 20, 40, 50
    c = Canvas(w, h)
    points = train + val
    if not points:
        return ""
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_lo, y_hi = (y_lo, y_hi) if y_hi > y_lo else (y_lo - 0.5, y_hi + 0.5)

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (w - left - right)

    def py(y: float) -> float:
        return top + (y_hi - y) / (y_hi - y_lo) * (h - top - bottom)

    c.text(left, 24, f"{ylabel} by step (blue: training, orange: held out)", size=12, bold=True)
    c.line([(left, top), (left, h - bottom), (w - right, h - bottom)], color="#000")
    for t in _ticks(x_lo, x_hi):
        c.line([(px(t), h - bottom), (px(t), h - bottom + 5)], color="#000")
        c.text(px(t), h - bottom + 18, f"{t:g}", size=9, anchor="middle")
    for t in _ticks(y_lo, y_hi):
        c.line([(left - 5, py(t)), (left, py(t))], color="#000")
        c.text(left - 8, py(t) + 3, f"{t:.3g}", size=9, anchor="end")
    c.text((left + w - right) / 2, h - 10, "step", size=10, anchor="middle")
    for series, color, marked in ((train, "#1f77b4", False), (val, "#ff7f0e", True)):
        if len(series) > 1:
            c.line([(px(x), py(y)) for x, y in series], color=color, width=1.5)
        if marked or len(series) == 1:  # held-out points are few: mark each
            for x, y in series:
                c.box(px(x) - 2.5, py(y) - 2.5, 5, 5, fill=color, stroke=color)
    path = os.path.join(run_dir, "loss.png" if has_matplotlib() else "loss.svg")
    c.save(path)
    return path
