"""INT's ratio and interval schedules, exactly as DESIGN §4 (the paper's defaults).

Ratio schedules give the fraction ``r(t)`` of samples selected at step ``t`` (``k = ⌊r·N⌋``,
see `select_count`); interval schedules say at which steps a new top-k selection is made
(the subset is reused in between).

=============  ==============================================================
ratio          r(t), ``0 <= t < T``
=============  ==============================================================
``constant``   ``r0``
``linear``     ``r0 + (1 - r0) t / T``
``step``       ``min(r0 + ⌊t / (T/10)⌋ (1 - r0) / 10, 1)``: 0.20, 0.28, … 0.92
``cosine``     ``r0 + (1 - r0) (1 - cos(π t / T)) / 2``
``decay:F``    ``r0 + (1 - r0) max(0, 1 - t / (F T))``: every sample at first, down
               to r0 by ``F T`` (a full-batch warm start, ``0 < F <= 1``)
=============  ==============================================================

Interval schedules: ``dense`` (select every step), ``fixed:N`` (every N steps) and
``incremental``: every step during the first 25% of T, then the remaining 75% cut into
five equal phases with intervals 10, 20, 30, 40, 50. Each phase starts with a selection and
reselects every ``interval`` steps within the phase, so a phase's last subset may be used
for fewer than ``interval`` steps (T = 5000 gives 1,250 + 75 + 38 + 25 + 19 + 15 = 1,422
selections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "RATIO_SCHEDULES",
    "INTERVAL_SCHEDULES",
    "INCREMENTAL_INTERVALS",
    "IntervalSchedule",
    "ratio_at",
    "ratio_max",
    "select_count",
    "parse_interval",
    "interval_at",
    "is_selection_step",
    "selection_steps",
]

RATIO_SCHEDULES = ("constant", "linear", "step", "cosine", "decay:F")
INTERVAL_SCHEDULES = ("dense", "incremental", "fixed:N")
# The paper's incremental phases after the dense first quarter.
INCREMENTAL_INTERVALS = (10, 20, 30, 40, 50)
_DENSE_FRACTION_NUM, _DENSE_FRACTION_DEN = 1, 4


def _check_steps(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
    if step < 0:
        raise ValueError(f"step must be >= 0 (got {step})")


def ratio_at(schedule: str, step: int, total_steps: int, r0: float = 0.2) -> float:
    """Selection ratio at ``step`` of a ``total_steps`` run.

    Parameters
    ----------
    schedule
        One of `RATIO_SCHEDULES`.
    step, total_steps
        ``0 <= step``; steps at or past ``total_steps`` get the schedule's end value.
    r0
        Starting ratio, in (0, 1].

    Returns
    -------
    float
        The ratio in ``[r0, 1]``.
    """
    _check_steps(step, total_steps)
    if not 0.0 < r0 <= 1.0:
        raise ValueError(f"r0 must be in (0, 1] (got {r0})")
    t = min(step, total_steps)
    if schedule == "constant":
        return float(r0)
    if schedule == "linear":
        return min(r0 + (1.0 - r0) * t / total_steps, 1.0)
    if schedule == "step":
        # ⌊t / (T/10)⌋ computed as ⌊10 t / T⌋ in integers: exact for any T, no float drift.
        return min(r0 + (10 * t // total_steps) * (1.0 - r0) / 10.0, 1.0)
    if schedule == "cosine":
        return min(r0 + (1.0 - r0) * 0.5 * (1.0 - math.cos(math.pi * t / total_steps)), 1.0)
    if isinstance(schedule, str) and schedule.startswith("decay:"):
        return r0 + (1.0 - r0) * max(0.0, 1.0 - t / (_decay_fraction(schedule) * total_steps))
    raise ValueError(f"unknown ratio schedule {schedule!r} (expected one of {', '.join(RATIO_SCHEDULES)})")


def _decay_fraction(schedule: str) -> float:
    try:
        fraction = float(schedule[len("decay:"):])
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"bad ratio schedule {schedule!r}: 'decay:F' needs a fraction 0 < F <= 1")
    return fraction


def ratio_max(schedule: str, total_steps: int, r0: float) -> float:
    """The largest ratio a run of ``total_steps`` selects (at its first or last step)."""
    total_steps = max(1, total_steps)
    return max(ratio_at(schedule, 0, total_steps, r0), ratio_at(schedule, total_steps - 1, total_steps, r0))


def select_count(ratio: float, n: int) -> int:
    """``k = ⌊ratio · n⌋``, at least 1 and at most ``n``.

    A tiny tolerance keeps float products such as ``0.36 * 5000 = 1799.9999…`` at 1800.
    """
    return max(1, min(n, int(math.floor(ratio * n + 1e-9))))


@dataclass(frozen=True)
class IntervalSchedule:
    """A parsed interval schedule: ``kind`` is ``dense``, ``incremental`` or ``fixed`` (with ``every``)."""

    kind: str
    every: int = 1

    def __str__(self) -> str:
        return f"fixed:{self.every}" if self.kind == "fixed" else self.kind


def parse_interval(spec: "str | IntervalSchedule") -> IntervalSchedule:
    """Parse ``"dense"``, ``"incremental"`` or ``"fixed:N"`` (N >= 1); ValueError on anything else."""
    if isinstance(spec, IntervalSchedule):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"interval schedule must be a string, not {type(spec).__name__}")
    s = spec.strip().lower()
    if s in ("dense", "incremental"):
        return IntervalSchedule(s)
    if s.startswith("fixed:"):
        n = s[len("fixed:") :]
        if n.isdigit() and int(n) >= 1:
            return IntervalSchedule("fixed", int(n))
        raise ValueError(f"bad interval schedule {spec!r}: 'fixed:N' needs an integer N >= 1")
    raise ValueError(f"unknown interval schedule {spec!r} (expected dense, incremental or fixed:N)")


def _incremental_phases(total_steps: int) -> list[tuple[int, int]]:
    """``(start, interval)`` of each incremental phase, the dense first quarter included."""
    dense_end = total_steps * _DENSE_FRACTION_NUM // _DENSE_FRACTION_DEN
    rest = total_steps - dense_end
    m = len(INCREMENTAL_INTERVALS)
    phases = [(0, 1)] + [(dense_end + i * rest // m, iv) for i, iv in enumerate(INCREMENTAL_INTERVALS)]
    # Tiny T can make phases empty (equal starts); keep the later one so starts stay increasing.
    out: list[tuple[int, int]] = []
    for start, iv in phases:
        if out and out[-1][0] == start:
            out[-1] = (start, iv)
        else:
            out.append((start, iv))
    return out


def _phase(sched: IntervalSchedule, step: int, total_steps: int) -> tuple[int, int]:
    """``(phase start, interval)`` in effect at ``step``."""
    if sched.kind == "dense":
        return 0, 1
    if sched.kind == "fixed":
        return 0, sched.every
    current = (0, 1)
    for start, iv in _incremental_phases(total_steps):
        if step >= start:
            current = (start, iv)
        else:
            break
    return current


def interval_at(schedule: "str | IntervalSchedule", step: int, total_steps: int) -> int:
    """The reselection interval in effect at ``step`` (1 = a new selection every step)."""
    _check_steps(step, total_steps)
    return _phase(parse_interval(schedule), step, total_steps)[1]


def is_selection_step(schedule: "str | IntervalSchedule", step: int, total_steps: int) -> bool:
    """Whether a new selection is made at ``step`` (always at step 0 and at each phase start)."""
    _check_steps(step, total_steps)
    start, iv = _phase(parse_interval(schedule), step, total_steps)
    return (step - start) % iv == 0


def selection_steps(schedule: "str | IntervalSchedule", total_steps: int) -> list[int]:
    """All steps in ``[0, total_steps)`` at which a new selection is made, ascending.

    Examples
    --------
    >>> len(selection_steps("incremental", 5000))
    1422
    >>> selection_steps("fixed:2000", 5000)
    [0, 2000, 4000]
    """
    _check_steps(0, total_steps)
    sched = parse_interval(schedule)
    if sched.kind == "dense":
        return list(range(total_steps))
    if sched.kind == "fixed":
        return list(range(0, total_steps, sched.every))
    phases = _incremental_phases(total_steps)
    ends = [s for s, _ in phases[1:]] + [total_steps]
    steps: list[int] = []
    for (start, iv), end in zip(phases, ends):
        steps.extend(range(start, min(end, total_steps), iv))
    return steps
