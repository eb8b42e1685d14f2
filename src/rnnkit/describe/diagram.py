"""The unrolled picture of a recurrent stack: layers (rows, layer 0 at the bottom) by time steps (columns).

Each box is one cell step; arrows carry the state along time (left to right forward, right to left for the
backward direction) and the outputs up the stack, labelled with their shapes. Long sequences show the first
three steps, an ellipsis and the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .drawing import Canvas, text_width

__all__ = ["StackLayer", "Stack", "draw_stack", "stack_canvas"]


@dataclass(frozen=True)
class StackLayer:
    """One layer of the unrolled picture: its label and the shapes on its arrows (per direction)."""

    label: str
    input: tuple[int, ...]
    output: tuple[int, ...]
    state: str


class Stack(Protocol):
    """What the picture reads (``rnnkit.describe.Summary`` is one): a title, the layers bottom-up, the number of
    time steps, the batch size and the directions (1 or 2)."""

    title: str
    layers: Sequence[StackLayer]
    steps: int
    batch: int
    directions: int


_BOX_W, _BOX_H, _GAP, _LEFT, _RIGHT = 110, 34, 120, 170, 170
_STATE_SIZE, _LINE = 8, 10  # the state labels' font size and line spacing


def _columns(steps: int) -> list[int | None]:
    return list(range(steps)) if steps <= 6 else [0, 1, 2, None, steps - 1]


def _state_lines(label: str) -> list[str]:
    """The state label on one line if it fits the default gap between two steps, else on two: broken after
    the first comma inside its outer parentheses, e.g. ``LSTMStateTuple(c=(32, 128),`` / ``h=(32, 128))``."""
    if text_width(label, _STATE_SIZE) <= _GAP - 16:
        return [label]
    depth = 0
    for i, ch in enumerate(label):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth in (0, 1):
            return [label[: i + 1], label[i + 1 :].strip()]
    return [label]


def stack_canvas(s: Stack) -> Canvas:
    """Lay out ``s``'s stack on a ``Canvas``: the gaps between steps and the left margin grow to fit their
    labels, so no text overlaps a box or another label."""
    cols = _columns(s.steps)
    dirs = s.directions
    states = [_state_lines(layer.state) for layer in s.layers]
    gap = max([_GAP, *(text_width(line, _STATE_SIZE) + 16 for lines in states for line in lines)])
    col_w = _BOX_W + gap
    left = max(
        [_LEFT, *(12 + max(text_width(f"layer {k}", 11, bold=True), text_width(layer.label, 9)) + 16
                  for k, layer in enumerate(s.layers))]
    )  # fmt: skip
    row_h = dirs * (_BOX_H + 12) + 64
    top = 80
    n = len(s.layers)
    width = max(left + len(cols) * col_w - gap + _BOX_W / 2 + _RIGHT, 24 + text_width(s.title, 13, bold=True))
    height = top + n * row_h + 70
    c = Canvas(width, height)
    c.text(12, 22, s.title, size=13, bold=True)
    c.text(12, 40, f"unrolled over {s.steps} time step(s), batch {s.batch}; shapes are (batch, features)", size=10)

    def x_of(j: int) -> float:
        return left + j * col_w

    def y_of(layer: int, d: int) -> float:  # top of the box of direction d in layer `layer` (0 at the bottom)
        return top + (n - 1 - layer) * row_h + 40 + d * (_BOX_H + 12)

    for k, layer in enumerate(s.layers):
        base = y_of(k, 0)
        c.text(12, base + 16, f"layer {k}", size=11, bold=True)
        c.text(12, base + 30, layer.label, size=9)
        for d in range(dirs):
            y = y_of(k, d)
            mid = y + _BOX_H / 2
            tag = ("fw", "bw")[d] if dirs == 2 else ""
            for j, t in enumerate(cols):
                if t is None:
                    c.text(x_of(j) + _BOX_W / 2, mid + 4, "...", size=14, anchor="middle")
                    continue
                c.box(x_of(j), y, _BOX_W, _BOX_H, f"{tag} t={t}".strip(), fill="#e8f0fe" if d == 0 else "#fdeee4")
            for j in range(len(cols) - 1):  # state along time
                a, b = x_of(j) + _BOX_W, x_of(j + 1)
                if d == 0:
                    c.arrow(a, mid, b, mid)
                else:
                    c.arrow(b, mid, a, mid)
            # The state's label once, above the first gap's arrow (its last line just above the arrow).
            lines = states[k] if len(cols) > 1 else []
            for i, line in enumerate(lines):
                y_text = mid - 4 - (len(lines) - 1 - i) * _LINE
                c.text(x_of(0) + _BOX_W + gap / 2, y_text, line, size=_STATE_SIZE, anchor="middle", color="#a33")
            if d == 0:
                end = x_of(len(cols) - 1) + _BOX_W
                c.arrow(end, mid, end + 60, mid)
                c.text(end + 64, mid + 4, "final state" + (" fw" if dirs == 2 else ""), size=9)
            else:
                c.arrow(left, mid, left - 40, mid)
                c.text(left - 44, mid + 14, "final bw", size=9, anchor="end")
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


def draw_stack(s: Stack, path: str) -> str:
    """Draw ``s`` to ``path`` (``.svg`` or ``.png``); returns the path."""
    return stack_canvas(s).save(path)
