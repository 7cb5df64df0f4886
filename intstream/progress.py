"""Progress reporting on stderr: a bar when stderr is a terminal, silent otherwise.

stdout is reserved for the stage's JSON manifest line.
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]


class Progress:
    """Minimal progress bar on stderr.

    Parameters
    ----------
    total
        Number of units (``None`` when unknown).
    label
        Shown before the bar.
    enabled
        ``None``: only when stderr is a TTY.
    """

    def __init__(self, total: int | None, label: str = "", *, enabled: bool | None = None, unit: str = ""):
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._t0 = time.perf_counter()
        self._last = 0.0

    def update(self, n: int = 1, status: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < 0.2 and (self.total is None or self.done < self.total):
            return
        self._last = now
        elapsed = now - self._t0
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            eta = elapsed / frac - elapsed if frac > 0 else 0.0
            line = f"\r{self.label} [{bar}] {self.done}/{self.total}{self.unit} {elapsed:.0f}s eta {eta:.0f}s {status}"
        else:
            line = f"\r{self.label} {self.done}{self.unit} {elapsed:.0f}s {status}"
        sys.stderr.write(line[:200])
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
