"""The in-core teacher: selects training subsets of a signal held in memory (DESIGN §4).

Strategies and presets are described in `intstream.teach.config`. With ``random_share = 0``
and ``weighting = "none"`` this is exactly the paper's algorithm.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..models import predict
from . import maps
from .config import TeacherConfig
from .protocol import Batch
from .schedules import interval_at, ratio_at, select_count, selection_steps
from .topk import sample_indices, topk_indices

__all__ = ["InCoreTeacher"]


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
    score_batch
        Samples per no-grad scoring forward (bounds its activation memory).
    shape
        The signal's grid (row-major sample order), for `sample_map`; default ``(N,)``.
    """

    grad_clip = None
    out_of_core = False

    def __init__(self, cfg: TeacherConfig, coords: torch.Tensor, targets: torch.Tensor, total_steps: int,
                 generator: torch.Generator, *, score_batch: int = 65536, shape: tuple[int, ...] | None = None):
        self.cfg = cfg
        self.score_batch = score_batch
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
        # For `sample_map` only (never read by a selection): samples trained on per map cell.
        self.shape = tuple(shape) if shape is not None else (self.n,)
        if math.prod(self.shape) != self.n:
            raise ValueError(f"shape {self.shape} does not hold {self.n} samples")
        self.cells = math.prod(maps.map_shape(self.shape))
        self.count = torch.zeros(self.cells, dtype=torch.int64, device=coords.device)
        self._hist: torch.Tensor | None = None  # the current subset's samples per cell

    def k_at(self, step: int) -> int:
        return select_count(ratio_at(self.cfg.ratio_schedule, step, self.total_steps, self.cfg.ratio), self.n)

    def batch(self, step: int, model: torch.nn.Module) -> Batch:
        """The samples to train on at ``step``, selecting anew when the schedule says so."""
        interval = interval_at(self.cfg.interval_schedule, step, self.total_steps)
        k = self.k_at(step)
        selected = False
        if k >= self.n and self.cfg.strategy == "full":
            self.index = None
        elif step in self._select_at or self.index is None:
            selected = True
            self.index = self._select(model, k)
        if selected or self._hist is None:
            self._hist = self._cell_counts(self.index)
        self.count += self._hist
        if self.index is None:
            return Batch([(self.coords, self.targets, None)], self.n, k / self.n, interval, selected)
        part = (self.coords[self.index], self.targets[self.index], self.weight)
        return Batch([part], int(self.index.shape[0]), k / self.n, interval, selected)

    def train_mse(self, model: torch.nn.Module, exact: bool = False) -> tuple[float, bool]:
        """MSE of the current weights over every sample (measured)."""
        pred = predict(model, self.coords, batch=self.score_batch)
        return float((pred - self.targets).square().mean()), True

    def close(self) -> None:
        pass

    def _cell_counts(self, index: torch.Tensor | None) -> torch.Tensor:
        if index is None:
            index = torch.arange(self.n, device=self.coords.device)
        return torch.bincount(maps.cell_of(index, self.shape), minlength=self.cells)

    def sample_map(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        """The error estimates that drive the draws (the pool's cache, or a fresh scoring
        when every selection scores every sample) and the samples trained on, per cell."""
        if self.cache is not None:
            err = self.cache.float().cpu().numpy()
        else:
            pred = predict(model, self.coords, batch=self.score_batch, dtype=self.score_dtype)
            err = (pred - self.targets).abs_().sum(dim=1).float().cpu().numpy()
        err = np.where(np.isfinite(err), err, np.nan).reshape(self.shape)
        return {"error": maps.reduce_grid(err, maps.cell_factors(self.shape), mean=True),
                "selected": self.count.cpu().numpy().astype(np.float32).reshape(maps.map_shape(self.shape))}

    def _errors(self, model) -> torch.Tensor:
        """Per-sample error scores: fresh over all samples, or the estimates (pool < 1)."""
        if self.cache is not None:
            # Re-score the next slice of the rotating pool; the rest keeps its estimate.
            m = max(1, math.ceil(self.cfg.pool * self.n))
            idx = torch.arange(self.cursor, self.cursor + m, device=self.coords.device) % self.n
            self.cursor = (self.cursor + m) % self.n
            pred = predict(model, self.coords[idx], batch=self.score_batch, dtype=self.score_dtype)
            self.cache[idx] = (pred - self.targets[idx]).abs_().sum(dim=1)
            return self.cache
        pred = predict(model, self.coords, batch=self.score_batch, dtype=self.score_dtype)
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
        index = sample_indices(p.cpu(), k, self.generator).to(self.coords.device)
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
        if self.cache is None:
            return
        if self.index is None:  # a full-batch step (a decaying ratio's start) refreshes every estimate
            self.cache = (pred.detach() - self.targets).abs().sum(dim=1)
        else:
            self.cache[self.index] = (pred.detach() - self.targets[self.index]).abs().sum(dim=1)

    def state_dict(self) -> dict:
        return {"index": None if self.index is None else self.index.cpu(),
                "weight": None if self.weight is None else self.weight.cpu(),
                "cache": None if self.cache is None else self.cache.cpu(), "cursor": self.cursor,
                "count": self.count.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.index = None if state["index"] is None else state["index"].to(self.coords.device)
        self.weight = None if state.get("weight") is None else state["weight"].to(self.coords.device)
        if state.get("cache") is not None:
            self.cache = state["cache"].to(self.coords.device)
        self.cursor = int(state.get("cursor", 0))
        if state.get("count") is not None and state["count"].numel() == self.cells:  # older checkpoints: none
            self.count = state["count"].to(self.coords.device)
        self._hist = None  # recomputed from the restored subset
