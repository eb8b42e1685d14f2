"""A tiny vector canvas: boxes, arrows, lines and text, saved as SVG (written here) or PNG (matplotlib).

One layout, two back ends: the stack diagram and the loss curve draw on a ``Canvas`` once; ``save`` writes
SVG by hand (no dependency) or, for ``.png``, replays the same shapes on matplotlib when it is installed.
Coordinates are pixels, origin top-left, y down (SVG's convention).

Example::

    >>> c = Canvas(200, 100)
    >>> c.box(10, 10, 80, 40, "LSTM l0")
    >>> c.arrow(90, 30, 150, 30, "(2, 20)")
    >>> c.save("tiny.svg")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

__all__ = ["Canvas", "has_matplotlib", "text_width"]

# Average advance of a sans-serif glyph as a fraction of the font size, rounded up (DejaVu Sans, the common
# fallback, averages ~0.55 over digits, lower case and punctuation): layouts size their gaps with it.
_CHAR_WIDTH = 0.6


def has_matplotlib() -> bool:
    """Whether matplotlib is installed (checked, not imported)."""
    return importlib.util.find_spec("matplotlib") is not None


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The estimated width in pixels of ``text`` at font ``size`` (bold glyphs run about 10% wider)."""
    return len(text) * size * _CHAR_WIDTH * (1.1 if bold else 1.0)


@dataclass
class Canvas:
    """Shapes in draw order; ``save(path)`` renders them by the file's extension."""

    width: float
    height: float
    shapes: list[tuple] = field(default_factory=list)

    def box(
        self, x: float, y: float, w: float, h: float, label: str = "", fill: str = "#e8f0fe", stroke: str = "#335"
    ) -> None:
        self.shapes.append(("box", x, y, w, h, fill, stroke))
        if label:
            self.text(x + w / 2, y + h / 2 + 4, label, size=11, anchor="middle")

    def line(self, points: list[tuple[float, float]], color: str = "#333", width: float = 1.0, dash: bool = False):
        self.shapes.append(("line", tuple(points), color, width, dash))

    def arrow(self, x1: float, y1: float, x2: float, y2: float, label: str = "", color: str = "#555") -> None:
        self.shapes.append(("arrow", x1, y1, x2, y2, color))
        if label:
            horizontal = abs(y2 - y1) < abs(x2 - x1)
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 2
            self.text(
                lx,
                ly - 4 if horizontal else ly + 3,
                label,
                size=8,
                anchor="middle" if horizontal else "start",
                dx=0 if horizontal else 4,
                color="#a33",
            )

    def text(
        self,
        x: float,
        y: float,
        s: str,
        size: float = 10,
        anchor: str = "start",
        dx: float = 0,
        color: str = "#111",
        bold: bool = False,
    ) -> None:
        self.shapes.append(("text", x + dx, y, s, size, anchor, color, bold))

    # -- back ends -------------------------------------------------------------------------------------------------
    def to_svg(self) -> str:
        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:.0f}" height="{self.height:.0f}" '
            f'viewBox="0 0 {self.width:.0f} {self.height:.0f}" font-family="sans-serif">',
            '<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker></defs>',
            f'<rect width="{self.width:.0f}" height="{self.height:.0f}" fill="white"/>',
        ]
        for s in self.shapes:
            kind = s[0]
            if kind == "box":
                _, x, y, w, h, fill, stroke = s
                out.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="{min(5, w / 4):g}" '
                    f"fill={quoteattr(fill)} stroke={quoteattr(stroke)}/>"
                )
            elif kind == "line":
                _, pts, color, width, dash = s
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                extra = ' stroke-dasharray="4 3"' if dash else ""
                out.append(
                    f'<polyline points="{d}" fill="none" stroke={quoteattr(color)} stroke-width="{width}"{extra}/>'
                )
            elif kind == "arrow":
                _, x1, y1, x2, y2, color = s
                out.append(
                    f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke={quoteattr(color)} '
                    'marker-end="url(#head)"/>'
                )
            else:
                _, x, y, text, size, anchor, color, bold = s
                weight = ' font-weight="bold"' if bold else ""
                out.append(
                    f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                    f"fill={quoteattr(color)}{weight}>{escape(text)}</text>"
                )
        out.append("</svg>")
        return "\n".join(out) + "\n"

    def _save_png(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

        dpi = 100
        fig = plt.figure(figsize=(self.width / dpi, self.height / dpi), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.set_xlim(0, self.width)
        ax.set_ylim(self.height, 0)
        ax.axis("off")
        align = {"start": "left", "middle": "center", "end": "right"}
        for s in self.shapes:
            kind = s[0]
            if kind == "box":
                _, x, y, w, h, fill, stroke = s
                style = f"round,pad=0,rounding_size={min(5, w / 4):g}"
                ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle=style, fc=fill, ec=stroke))
            elif kind == "line":
                _, pts, color, width, dash = s
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, lw=width, ls="--" if dash else "-")
            elif kind == "arrow":
                _, x1, y1, x2, y2, color = s
                ax.add_patch(FancyArrowPatch((x1, y1), (x2, y2), arrowstyle="-|>", mutation_scale=10, color=color))
            else:
                _, x, y, text, size, anchor, color, bold = s
                ax.text(
                    x,
                    y,
                    text,
                    fontsize=size * 0.75,
                    ha=align[anchor],
                    va="baseline",
                    color=color,
                    fontweight="bold" if bold else "normal",
                )
        fig.savefig(path, dpi=dpi)
        plt.close(fig)

    def save(self, path: str | os.PathLike) -> str:
        """Write ``path``: ``.svg`` by hand; ``.png`` through matplotlib (ValueError if it is not installed)."""
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext == ".svg":
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.to_svg())
        elif ext == ".png":
            if not has_matplotlib():
                raise ValueError(
                    f"drawing: writing {path} (PNG) needs matplotlib, which is not installed; "
                    "install it (pip install matplotlib) or ask for a .svg file, which needs nothing"
                )
            self._save_png(path)
        else:
            raise ValueError(f"drawing: expected a file name ending in .svg or .png, got {path!r}")
        return path
