"""Live progress on stderr: one self-rewriting line on a terminal, plain lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``update(step, metrics, units)`` after each step: rate in ``unit``/s since the start, ETA to ``total``.

    On a TTY the line is rewritten in place (``\\r``); elsewhere a line is printed every ``every`` steps and
    at the last one. ``message(text)`` prints a full line (evaluations, samples) without breaking the bar.
    """

    def __init__(self, total: int, start: int, unit: str, every: int, stream: TextIO | None = None):
        self.total, self.start, self.unit, self.every = total, start, unit, max(1, every)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.units = 0
        self._width = 0
        self._last = 0.0

    def update(self, step: int, metrics: str, units: int) -> None:
        self.units += units
        now = time.perf_counter()
        if step != self.total and (step % self.every if not self.tty else now - self._last < 0.1):
            return  # plain lines every `every` steps; a terminal line at most 10 times a second
        self._last = now
        elapsed = now - self.t0
        done = step - self.start
        rate = self.units / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - step) if done else 0.0
        line = f"step {step}/{self.total}  {metrics}  {rate:,.0f} {self.unit}/s  ETA {format_duration(eta)}"
        if self.tty:
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Wipe the live line (before printing elsewhere, e.g. a sample on stdout)."""
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def message(self, text: str) -> None:
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
