"""Progress on stderr: a tqdm bar on a terminal or in a notebook, plain lines otherwise.

stdout is reserved for the stage's JSON manifest line. Three modes, chosen per bar:

* a terminal (stderr is a TTY): a `tqdm` bar with rate and an h:mm:ss ETA; after a
  resume the bar starts at the checkpoint's step (``initial=``) and both rate and ETA
  count only this process's steps;
* a Jupyter kernel: tqdm's notebook widget (`tqdm.auto`), for the Python API;
* anything else (a Slurm log, a pipe): one plain line on the ``intstream.progress``
  logger at least every `log_interval` seconds -- from a timer thread, so a single
  long step (an out-of-core round) still shows life -- and one when it ends (work that
  ends within the first interval stays quiet)::

      fit: step 1200/10000 (12%) psnr 24.31 ratio 0.20 | 41.2 steps/s | elapsed 0:00:29 | eta 0:03:33

The CLI sets the interval (``--log-interval``) and silences every bar with ``-q``
through `configure`; library callers get lines only once they configure logging.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time

__all__ = ["Progress", "configure", "format_hms", "LOG_INTERVAL"]

LOG_INTERVAL = 30.0  # seconds between plain progress lines (a Slurm log shows life)

logger = logging.getLogger("intstream.progress")

_settings: dict = {"enabled": None, "log_interval": LOG_INTERVAL}


def configure(*, enabled: bool | None = None, log_interval: float | None = None) -> None:
    """Process-wide defaults for bars whose caller passed ``enabled=None``.

    Parameters
    ----------
    enabled
        ``False`` silences every such bar (``-q``); ``None`` restores the automatic choice.
    log_interval
        Seconds between plain progress lines when stderr is not a terminal.
    """
    _settings["enabled"] = enabled
    if log_interval is not None:
        if not log_interval > 0:
            raise ValueError(f"log_interval must be > 0, got {log_interval}")
        _settings["log_interval"] = float(log_interval)


def format_hms(seconds: float | None) -> str:
    """``h:mm:ss`` (``?`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _isatty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2e}"
    return str(value)


# tqdm's default layout, with h:mm:ss times (tqdm writes mm:ss under an hour).
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed_hms}<{eta_hms}, {rate_fmt}{postfix}]"


def _bar_class():
    """`tqdm.auto.tqdm` (the notebook widget in Jupyter) with ``elapsed_hms`` and ``eta_hms``."""
    from tqdm.auto import tqdm

    class Bar(tqdm):
        @property
        def format_dict(self):
            d = super().format_dict
            n, initial, elapsed, total = d["n"], d.get("initial", 0), d["elapsed"], d["total"]
            # tqdm's rate (smoothed) counts only this process's units: `initial` is excluded.
            rate = d.get("rate") or ((n - initial) / elapsed if elapsed else None)
            d["elapsed_hms"] = format_hms(elapsed)
            d["eta_hms"] = format_hms((total - n) / rate) if rate and total else "?"
            return d

    return Bar


class Progress:
    """Progress of ``total`` units on stderr (see the module docstring for the modes).

    Parameters
    ----------
    total
        Number of units (``None`` when unknown).
    label
        Names the work (``fit``, ``eval``, ``ingest photo.png``).
    enabled
        ``True``/``False`` force it on/off; ``None``: on unless `configure` silenced it.
    unit
        Unit name shown with the rate (``step``, ``block``).
    initial
        Units already done before this process (a resumed run): the count starts there
        and the rate and ETA count only the units done from here on.
    log_interval
        Seconds between plain lines (default: `configure`'s, 30 s).

    Attributes
    ----------
    done
        Units done so far, ``initial`` included.
    mode
        ``"bar"``, ``"lines"`` or ``None`` (silent).
    """

    def __init__(self, total: int | None, label: str = "", *, enabled: bool | None = None, unit: str = "",
                 initial: int = 0, log_interval: float | None = None):
        self.total, self.label, self.unit = total, label, unit or "it"
        self.initial = self.done = int(initial)
        self.fields: dict = {}
        self.log_interval = float(log_interval or _settings["log_interval"])
        on = _settings["enabled"] is not False if enabled is None else enabled
        self._bar = self._thread = None
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()
        if not on or (not (_isatty() or _in_notebook()) and not logger.isEnabledFor(logging.INFO)):
            self.mode = None  # off, or plain lines nobody would see (logging not set up for INFO)
        elif _isatty() or _in_notebook():
            self.mode = "bar"
            try:
                sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
            except (AttributeError, OSError, ValueError):
                sized = False  # a notebook, or a pseudo-terminal that reports no size
            self._bar = _bar_class()(total=total, initial=self.initial, desc=label, unit=self.unit, file=sys.stderr,
                                     bar_format=BAR_FORMAT,
                             dynamic_ncols=sized, ncols=None if sized else 100, nrows=None if sized else 24,
                             mininterval=0.2, leave=True)
        else:
            self.mode = "lines"
            self._lines, self._emitted = 0, None
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._heartbeat, name=f"progress-{label}", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    def set_total(self, total: int) -> None:
        """A new total (fit's T refitted to a time budget)."""
        with self._lock:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()

    def update(self, n: int = 1, status: str = "", **fields) -> None:
        """Count ``n`` more units; ``fields`` (``psnr=..``) and ``status`` are shown beside them."""
        with self._lock:
            self.done += n
            if status:
                fields = {"": status, **fields}
            if fields:
                self.fields = fields
        if self._bar is not None:
            if fields:
                self._bar.set_postfix_str(self._fields_text(), refresh=False)
            self._bar.update(n)

    def _fields_text(self) -> str:
        return " ".join(f"{k} {_fmt(v)}".strip() for k, v in self.fields.items() if v is not None)

    def line(self) -> str:
        """The plain progress line for the current state."""
        with self._lock:
            done, text = self.done, self._fields_text()
        elapsed = time.perf_counter() - self._t0
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        if self.total:
            head = f"{self.label}: {self.unit} {done}/{self.total} ({100 * done / self.total:.0f}%)"
            eta = format_hms((self.total - done) / rate) if rate > 0 else "?"
        else:
            head, eta = f"{self.label}: {self.unit} {done}", None
        parts = [head + (f" {text}" if text else ""), f"{rate:.3g} {self.unit}s/s", f"elapsed {format_hms(elapsed)}"]
        if eta is not None:
            parts.append(f"eta {eta}")
        return " | ".join(parts)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.log_interval):
            self._emit()

    def _emit(self, final: bool = False) -> None:
        if final and (not self._lines or self._emitted == self.done):
            return  # work shorter than one interval stays quiet; or the heartbeat has just said it
        self._emitted = self.done
        logger.info(self.line())
        self._lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._emit(final=True)  # the final count

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
