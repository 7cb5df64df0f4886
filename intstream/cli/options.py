"""The shared option registry: each option means the same in every command."""

from __future__ import annotations

import math

import click

__all__ = ["output", "overwrite", "device", "seed", "verbosity", "debug",
           "FiniteFloat", "Size", "parse_size", "MAX_COUNT", "MAX_SEED",
           "MAX_CAPACITY", "MAX_BITS", "MAX_KBPS"]

# Counts (steps, batch sizes, chunk edges) fit a signed 32-bit int wherever they go.
MAX_COUNT = 2**31 - 1
# Seeds are unsigned 32-bit: numpy's legacy seeding takes exactly this range, torch more.
MAX_SEED = 2**32 - 1
# Model size knobs: far above any useful value, low enough that the width they imply is a
# number torch can allocate (the memory plan then refuses what does not fit, exit 2).
MAX_CAPACITY = 1e4  # parameters per signal value
MAX_BITS = 1e4  # bits per pixel / per sample of weights file
MAX_KBPS = 1e7  # kbit/s of weights file per second of audio


class FiniteFloat(click.FloatRange):
    """A `click.FloatRange` that also refuses NaN, Inf and values that overflow to Inf.

    FloatRange alone lets ``nan`` through: every comparison with NaN is false.
    """

    name = "number"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None  # the base class words the error
        if number is not None and not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_size(text) -> int:
    """``"2G"``, ``"512MiB"``, ``"1.5g"``, ``"1000000"`` -> bytes (binary units); ValueError if not a size."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size")
    if isinstance(text, (int, float)):
        number, unit = float(text), ""
    else:
        v = str(text).strip().lower().removesuffix("ib").removesuffix("b")
        unit = v[-1] if v and v[-1] in _UNITS else ""
        number = float(v[: len(v) - len(unit)].strip())  # ValueError for garbage
    if not math.isfinite(number):
        raise ValueError(f"{text!r} is not a finite size")
    return int(number * _UNITS[unit])


class Size(click.ParamType):
    """A byte size like ``2G``, ``512M`` or ``1000000``: finite, at least ``min`` and at most ``max``."""

    name = "size"

    def __init__(self, min: int = 1, max: int = 1 << 60):
        self.min, self.max = min, max

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            n = value
        else:
            try:
                n = parse_size(value)
            except (ValueError, OverflowError):
                self.fail(f"{value!r} is not a size like 2G, 512M or 1000000", param, ctx)
        if n < self.min:
            self.fail(f"{value!r} is not a positive size" if self.min == 1 else
                      f"{value!r} is below the minimum of {self.min} bytes", param, ctx)
        if n > self.max:
            self.fail(f"{value!r} is above the maximum of {self.max} bytes", param, ctx)
        return n


overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
device = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the network runs (auto: cuda when available).",
)
seed = click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                    help="Random seed (0 to 2**32-1).")
debug = click.option("--debug", is_flag=True, envvar="INTSTREAM_DEBUG", help="Show tracebacks on errors.")


def output(help_text: str, required: bool = False):
    return click.option("-o", "--output", "output", type=click.Path(), required=required, help=help_text)


def verbosity(f):
    f = click.option("-q", "--quiet", count=True, help="Less on stderr: no progress (-qq: errors only).")(f)
    f = click.option("-v", "--verbose", count=True, help="More on stderr: debug logs and tracebacks.")(f)
    return f


def log_interval(f):
    """``--log-interval``: seconds between plain progress lines when stderr is not a terminal."""
    from intstream.progress import LOG_INTERVAL

    return click.option("--log-interval", type=FiniteFloat(0, min_open=True), default=LOG_INTERVAL,
                        show_default=True, envvar="INTSTREAM_LOG_INTERVAL", metavar="SECONDS",
                        help="Seconds between progress lines when stderr is not a terminal (batch logs).")(f)


def config(f):
    """``--config FILE``: option values from TOML (or a run's config.json); the command line wins."""
    from .runconfig import apply_config

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=True,
                        callback=apply_config, metavar="FILE",
                        help="TOML file of option = value (keys: option names; a [command] table per "
                             "stage), or a run's config.json; options given here override it.")(f)
