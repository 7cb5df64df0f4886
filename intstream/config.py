"""What every frozen config dataclass shares: refusing keys it does not know."""

from __future__ import annotations

import math
import numbers
from dataclasses import fields

from .errors import InputError

__all__ = ["check_keys", "check_number", "ConfigError"]


def check_keys(cls, keys, what: str) -> None:
    """Raise ValueError naming any of ``keys`` that is not a field of dataclass ``cls``.

    A typo in a config or an override must fail loudly, never silently become a default.
    """
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(keys) - known)
    if unknown:
        raise ValueError(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(sorted(known))})")


class ConfigError(InputError, ValueError):
    """A config value out of its range: a `ValueError` to Python callers, exit 2 on the CLI."""


def check_number(obj, name: str, *, lo=None, hi=None, lo_open: bool = False, integer: bool = False,
                 optional: bool = False) -> None:
    """Refuse ``obj.name`` unless it is a finite number (an integer if ``integer``) within [lo, hi].

    ``lo_open`` makes the lower bound exclusive; ``optional`` lets ``None`` through (the
    kind's default). NaN and Inf are refused whatever the bounds: every comparison with
    NaN is false, so a plain range check would let it pass.
    """
    value = getattr(obj, name)
    if value is None and optional:
        return
    kind = "an integer" if integer else "a finite number"
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
    if ok and not integer:
        ok = math.isfinite(float(value))
    if ok:
        ok = (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        bounds = []
        if lo is not None:
            bounds.append(f"{'>' if lo_open else '>='} {lo}")
        if hi is not None:
            bounds.append(f"<= {hi}")
        rng = f" {' and '.join(bounds)}" if bounds else ""
        raise ConfigError(None, f"{type(obj).__name__}.{name} = {value!r}: must be {kind}{rng}")
