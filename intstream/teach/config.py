"""Teacher configuration: strategy names, presets and step factors (torch-free).

The CLI and the library both import these facts from here; nothing retypes them.

A teacher owns the candidate samples (all of them in core) and, at each selection step
of its interval schedule, picks the subset the next steps train on:

``full``    every sample, every step (the baseline);
``random``  a uniform subset of the size INT would pick (the other baseline);
``int``     the paper: an error map over all samples with the current weights (no grad,
            L1 summed over channels), then the top-k; the subset is reused until the
            next selection;
``intstream`` intstream's default: samples drawn by importance (probability ~ current
            error, mixed with a uniform share) and weighted by 1/(N p), so the loss
            stays an unbiased estimate of the full MSE; errors are estimated from a
            rotating bf16-scored pool plus the training forward, reselected every 2
            steps, and it runs 2x the standard T (`STEPS_FACTOR`). Chosen by
            benchmarks/bench_teachers.py (see BENCHMARKS.md).

The in-core teacher is exactly the paper's algorithm when ``random_share = 0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..config import check_keys
from .schedules import parse_interval, ratio_at

__all__ = ["TeacherConfig", "STRATEGIES", "STRATEGY_PRESETS", "OUT_OF_CORE_PRESETS", "STEPS_FACTOR",
           "resolve_teacher"]

STRATEGIES = ("intstream", "int", "full", "random")


@dataclass(frozen=True)
class TeacherConfig:
    """How samples are selected.

    Attributes
    ----------
    strategy
        One of `STRATEGIES`.
    ratio
        r0, the selected fraction at the start (the paper: 0.2).
    ratio_schedule
        ``constant``, ``linear``, ``step`` (the paper), ``cosine`` or ``decay:F`` (every
        sample at first, down to ``ratio`` by ``F T``: a full-batch warm start whose
        forwards fill the error estimates).
    interval_schedule
        ``dense``, ``incremental`` (the paper) or ``fixed:N``.
    random_share
        Fraction of each selection drawn uniformly from the unselected samples instead
        of by error (0 = the paper).
    score_dtype
        ``float32`` or ``bfloat16`` for the no-grad scoring forward.
    pool
        Fraction of the samples re-scored at each selection (1 = all, the paper). Below 1
        the teacher keeps an error estimate per sample: a rotating pool is re-scored,
        the training forward's errors refresh the selected samples for free, and the
        top-k runs over those estimates.
    weighting
        ``none``: train on the top-k (plus the random share) with equal weights, as the
        paper. ``importance``: draw the k samples with probability proportional to their
        error, mixed with a uniform share of ``random_share``, and weight each by
        ``1 / (N p)``, so every step's loss is an unbiased estimate of the full-signal
        MSE (stale error estimates then cost efficiency, never bias).
    """

    strategy: str = "intstream"
    ratio: float = 0.2
    ratio_schedule: str = "step"
    interval_schedule: str = "incremental"
    random_share: float = 0.0
    score_dtype: str = "float32"
    pool: float = 1.0
    weighting: str = "none"

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r} (expected one of {', '.join(STRATEGIES)})")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")
        if not 0.0 <= self.random_share <= 1.0:
            raise ValueError(f"random_share must be in [0, 1], got {self.random_share}")
        if self.weighting not in ("none", "importance"):
            raise ValueError(f"weighting must be none or importance, got {self.weighting!r}")
        if not 0.0 < self.pool <= 1.0:
            raise ValueError(f"pool must be in (0, 1], got {self.pool}")
        if self.score_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"score_dtype must be float32 or bfloat16, got {self.score_dtype!r}")
        parse_interval(self.interval_schedule)
        ratio_at(self.ratio_schedule, 0, 10, self.ratio)  # validates the name

    def to_dict(self) -> dict:
        return asdict(self)


# intstream's own teacher, as measured in benchmarks/bench_teachers.py (see BENCHMARKS.md).
STRATEGY_PRESETS = {
    # Importance-weighted draws (p ~ error, half uniform) of 20% of the samples, redrawn
    # every 2 steps from error estimates of which a rotating quarter is re-scored in bf16.
    "intstream": {"weighting": "importance", "ratio": 0.2, "ratio_schedule": "constant", "random_share": 0.5,
                  "pool": 0.25, "interval_schedule": "fixed:2", "score_dtype": "bfloat16"},
    "int": {"interval_schedule": "incremental", "random_share": 0.0, "ratio_schedule": "step", "score_dtype": "float32"},
    "full": {"interval_schedule": "dense", "ratio": 1.0, "ratio_schedule": "constant", "random_share": 0.0},
    "random": {"interval_schedule": "incremental", "random_share": 1.0, "ratio_schedule": "step"},
}


# What differs in rounds over chunks (intstream.teach.rounds). In core every sample keeps
# an error estimate between its re-scorings; out of core a chunk has none, so a round
# scores every chunk it draws from: with a quarter scored (the rest drawing uniformly)
# the default ended 0.55 dB behind, with all of them level with the in-core default
# (bench_teachers.py --out-of-core, 3 Kodak crops: 41.49 / 42.11 dB vs 42.04 in core).
OUT_OF_CORE_PRESETS = {"intstream": {"pool": 1.0}}


# Steps per "standard T" when --steps is not given: intstream's steps are cheaper, and
# reaching full batch's final quality takes more of them (benchmarks/bench_teachers.py).
STEPS_FACTOR = {"intstream": 2.0}


def resolve_teacher(strategy: str = "intstream", *, out_of_core: bool = False, **overrides) -> TeacherConfig:
    """The teacher config for a strategy: its preset (and its `OUT_OF_CORE_PRESETS` in
    rounds), then explicit (non-None) overrides."""
    if strategy not in STRATEGY_PRESETS:
        raise ValueError(f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    check_keys(TeacherConfig, overrides, "teacher option(s)")
    items = {**STRATEGY_PRESETS[strategy], **(OUT_OF_CORE_PRESETS.get(strategy, {}) if out_of_core else {}),
             **{k: v for k, v in overrides.items() if v is not None}}
    if strategy == "full":
        items.update(ratio=1.0, ratio_schedule="constant", random_share=0.0)
    if strategy == "random":
        items["random_share"] = 1.0
    return replace(TeacherConfig(strategy=strategy), **items)
