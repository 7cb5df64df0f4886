"""Teachers: which samples the learner trains on at each step (DESIGN §4).

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

import math
from dataclasses import asdict, dataclass, replace

import torch

from .config import check_keys
from .model import predict
from .schedules import interval_at, parse_interval, ratio_at, select_count, selection_steps
from .topk import topk_indices

__all__ = ["TeacherConfig", "STRATEGIES", "STRATEGY_PRESETS", "STEPS_FACTOR", "resolve_teacher", "InCoreTeacher"]

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
        ``constant``, ``linear``, ``step`` (the paper) or ``cosine``.
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


# Steps per "standard T" when --steps is not given: intstream's steps are cheaper, and
# reaching full batch's final quality takes more of them (benchmarks/bench_teachers.py).
STEPS_FACTOR = {"intstream": 2.0}


def resolve_teacher(strategy: str = "intstream", **overrides) -> TeacherConfig:
    """The teacher config for a strategy: its preset, then explicit (non-None) overrides."""
    if strategy not in STRATEGY_PRESETS:
        raise ValueError(f"unknown strategy {strategy!r} (expected one of {', '.join(STRATEGIES)})")
    check_keys(TeacherConfig, overrides, "teacher option(s)")
    items = {**STRATEGY_PRESETS[strategy], **{k: v for k, v in overrides.items() if v is not None}}
    if strategy == "full":
        items.update(ratio=1.0, ratio_schedule="constant", random_share=0.0)
    if strategy == "random":
        items["random_share"] = 1.0
    return replace(TeacherConfig(strategy=strategy), **items)


class InCoreTeacher:
    """Selects training subsets of an in-memory signal (the paper's setting).

    Parameters
    ----------
    cfg
        The teacher config.
    coords, targets
        All samples, ``(N, d)`` and ``(N, C)``, already on the training device.
    total_steps
        T, for the schedules.
    generator
        Source of randomness for random shares (the training loop checkpoints its state).
    """

    def __init__(self, cfg: TeacherConfig, coords: torch.Tensor, targets: torch.Tensor, total_steps: int, generator: torch.Generator):
        self.cfg = cfg
        self.coords = coords
        self.targets = targets
        self.n = coords.shape[0]
        self.total_steps = total_steps
        self.generator = generator
        self._select_at = set(selection_steps(cfg.interval_schedule, total_steps))
        self.index: torch.Tensor | None = None  # the current subset (None = all samples)
        self.weight: torch.Tensor | None = None  # per-sample loss weights of the subset (importance)
        self.score_dtype = torch.bfloat16 if cfg.score_dtype == "bfloat16" else None
        # Error estimates (pool < 1 only): inf until first scored, so unseen samples go first.
        self.cache = torch.full((self.n,), float("inf"), device=coords.device) if cfg.pool < 1 else None
        self.cursor = 0  # where the rotating pool continues

    def k_at(self, step: int) -> int:
        return select_count(ratio_at(self.cfg.ratio_schedule, step, self.total_steps, self.cfg.ratio), self.n)

    def batch(self, step: int, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """The ``(x, y)`` to train on at ``step`` and what was decided.

        The info dict holds ``ratio``, ``interval``, ``selected`` (bool) and ``weight``
        (per-sample loss weights, or None for a plain mean).
        """
        info = {"ratio": None, "interval": interval_at(self.cfg.interval_schedule, step, self.total_steps),
                "selected": False, "weight": None}
        k = self.k_at(step)
        info["ratio"] = k / self.n
        if k >= self.n and self.cfg.strategy in ("full",):
            self.index = None
        elif step in self._select_at or self.index is None:
            info["selected"] = True
            self.index = self._select(model, k)
        if self.index is None:
            return self.coords, self.targets, info
        info["weight"] = self.weight
        return self.coords[self.index], self.targets[self.index], info

    def _errors(self, model) -> torch.Tensor:
        """Per-sample error scores: fresh over all samples, or the estimates (pool < 1)."""
        if self.cache is not None:
            # Re-score the next slice of the rotating pool; the rest keeps its estimate.
            m = max(1, math.ceil(self.cfg.pool * self.n))
            idx = torch.arange(self.cursor, self.cursor + m, device=self.coords.device) % self.n
            self.cursor = (self.cursor + m) % self.n
            pred = predict(model, self.coords[idx], dtype=self.score_dtype)
            self.cache[idx] = (pred - self.targets[idx]).abs_().sum(dim=1)
            return self.cache
        pred = predict(model, self.coords, dtype=self.score_dtype)
        return (pred - self.targets).abs_().sum(dim=1)

    def _sample(self, model, k: int) -> torch.Tensor:
        """Importance sampling: k draws with p = (1 - a) e / sum(e) + a / N, weights 1 / (N p)."""
        error = self._errors(model)
        e = torch.nan_to_num(error.float(), nan=0.0, posinf=0.0)
        if not torch.isfinite(error).all():  # never-scored samples (cache) count as the largest error
            e = torch.where(torch.isfinite(error), e, e.max().clamp_min(1e-12))
        total = float(e.sum())
        a = self.cfg.random_share if total > 0 else 1.0
        p = (1.0 - a) * (e / max(total, 1e-30)) + a / self.n
        index = torch.multinomial(p.cpu(), k, replacement=True, generator=self.generator).to(self.coords.device)
        self.weight = 1.0 / (self.n * p[index])
        return index

    def _select(self, model, k: int) -> torch.Tensor | None:
        if self.cfg.weighting == "importance" and k < self.n:
            return self._sample(model, k)
        self.weight = None
        if k >= self.n:
            return None
        n_random = round(self.cfg.random_share * k)
        n_top = k - n_random
        if n_top > 0:
            top = topk_indices(self._errors(model), n_top)
        else:
            top = torch.empty(0, dtype=torch.long, device=self.coords.device)
        if n_random == 0:
            return top
        # Random share drawn from the samples the top-k did not take.
        mask = torch.ones(self.n, dtype=torch.bool)
        mask[top.cpu()] = False
        rest = mask.nonzero().squeeze(1)
        pick = torch.randperm(rest.numel(), generator=self.generator)[:n_random]
        return torch.cat([top, rest[pick].to(top.device)])

    def observe(self, pred: torch.Tensor) -> None:
        """The training forward's predictions for the current batch: free error estimates."""
        if self.cache is not None and self.index is not None:
            self.cache[self.index] = (pred.detach() - self.targets[self.index]).abs().sum(dim=1)

    def state_dict(self) -> dict:
        return {"index": None if self.index is None else self.index.cpu(),
                "weight": None if self.weight is None else self.weight.cpu(),
                "cache": None if self.cache is None else self.cache.cpu(), "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.index = None if state["index"] is None else state["index"].to(self.coords.device)
        self.weight = None if state.get("weight") is None else state["weight"].to(self.coords.device)
        if state.get("cache") is not None:
            self.cache = state["cache"].to(self.coords.device)
        self.cursor = int(state.get("cursor", 0))
