"""The unrolled picture of a recurrent stack: layers (rows, layer 0 at the bottom) by time steps (columns).

Each box is one cell step; arrows carry the state along time (left to right forward, right to left for the
backward direction) and the outputs up the stack, labelled with their shapes. Long sequences show the first
three steps, an ellipsis and the last one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .drawing import Canvas

if TYPE_CHECKING:
    from ._table import Summary

__all__ = ["draw_stack", "stack_canvas"]

_BOX_W, _BOX_H, _COL_W, _LEFT, _RIGHT = 110, 34, 230, 170, 170


def _columns(steps: int) -> list[int | None]:
    return list(range(steps)) if steps <= 6 else [0, 1, 2, None, steps - 1]


def stack_canvas(s: Summary) -> Canvas:
    """Lay out ``s``'s stack on a ``Canvas``."""
    cols = _columns(s.steps)
    dirs = s.directions
    row_h = dirs * (_BOX_H + 12) + 64
    top = 80
    n = len(s.layers)
    width = _LEFT + len(cols) * _COL_W + _RIGHT
    height = top + n * row_h + 70
    c = Canvas(width, height)
    c.text(12, 22, s.title, size=13, bold=True)
    c.text(12, 40, f"unrolled over {s.steps} time step(s), batch {s.batch}; shapes are (batch, features)", size=10)

    def x_of(j: int) -> float:
        return _LEFT + j * _COL_W

    def y_of(layer: int, d: int) -> float:  # top of the box of direction d in layer `layer` (0 at the bottom)
        return top + (n - 1 - layer) * row_h + 40 + d * (_BOX_H + 12)

    for k, layer in enumerate(s.layers):
        base = y_of(k, 0)
        c.text(12, base + 16, f"layer {k}", size=11, bold=True)
        c.text(12, base + 30, layer.label, size=9)
        for d in range(dirs):
            y = y_of(k, d)
            tag = ("fw", "bw")[d] if dirs == 2 else ""
            for j, t in enumerate(cols):
                if t is None:
                    c.text(x_of(j) + _BOX_W / 2, y + _BOX_H / 2 + 4, "...", size=14, anchor="middle")
                    continue
                c.box(x_of(j), y, _BOX_W, _BOX_H, f"{tag} t={t}".strip(), fill="#e8f0fe" if d == 0 else "#fdeee4")
            for j in range(len(cols) - 1):  # state along time
                label = layer.state if j == 0 else ""
                a, b = x_of(j) + _BOX_W, x_of(j + 1)
                if d == 0:
                    c.arrow(a, y + _BOX_H / 2, b, y + _BOX_H / 2, label)
                else:
                    c.arrow(b, y + _BOX_H / 2, a, y + _BOX_H / 2, label)
            if d == 0:
                end = x_of(len(cols) - 1) + _BOX_W
                c.arrow(end, y + _BOX_H / 2, end + 60, y + _BOX_H / 2)
                c.text(end + 64, y + _BOX_H / 2 + 4, "final state" + (" fw" if dirs == 2 else ""), size=9)
            else:
                c.arrow(_LEFT, y + _BOX_H / 2, _LEFT - 40, y + _BOX_H / 2)
                c.text(_LEFT - 44, y + _BOX_H / 2 + 14, "final bw", size=9, anchor="end")
        # the outputs going up: into the next layer, or out of the stack at the top
        y_top = y_of(k, 0)
        y_next = y_of(k + 1, dirs - 1) + _BOX_H if k + 1 < n else top + 10
        for j, t in enumerate(cols):
            if t is not None:
                cx = x_of(j) + _BOX_W / 2
                label = (f"{layer.output} = [fw, bw]" if dirs == 2 else str(layer.output)) if j == 0 else ""
                c.arrow(cx, y_top, cx, y_next + (0 if k + 1 < n else 8), label)
        if k + 1 == n:
            c.text(x_of(len(cols) - 1) + _BOX_W / 2 + 8, top + 14, "outputs", size=9)
    # inputs at the bottom
    y_bottom = y_of(0, dirs - 1) + _BOX_H
    for j, t in enumerate(cols):
        if t is not None:
            cx = x_of(j) + _BOX_W / 2
            c.arrow(cx, height - 30, cx, y_bottom, str(s.layers[0].input) if j == 0 else "")
            c.text(cx, height - 12, f"x[t={t}]", size=10, anchor="middle")
    return c


def draw_stack(s: Summary, path: str) -> str:
    """Draw ``s`` to ``path`` (``.svg`` or ``.png``); returns the path."""
    return stack_canvas(s).save(path)
