"""Out-of-core teaching: rounds over groups of Zarr chunks (DESIGN §5).

Each round the teacher

1. picks a group of chunks: a share of the least recently scored ones (never-seen first,
   so every chunk is revisited within ``ceil(n_chunks / n_oldest)`` rounds) and the rest
   by their last measured mean error (the chunk-level top-k);
2. has Dask score those chunks with a snapshot of the weights -- each chunk task returns
   only its local top-k candidates -- and merge them by a tree reduction into the round's
   global top-k (`intstream.teach.graph`); the next round is scored in the background
   while this one trains (with the weights of this round's start: one round stale);
3. trains ``round_steps`` steps on the selected samples (the whole selection per step when
   it fits ``max_batch``, else mini-batches drawn from it);
4. updates the per-chunk statistics from what the scoring measured.

Memory is bounded by the round (candidates + one chunk per scoring thread), set from the
memory budget, never by the signal.

Within a round the selection is the paper's rule (top-k of the round, plus the teacher's
random share); the in-core teacher's importance weighting and scoring pool do not apply
here yet: a chunk task would have to draw its samples by error itself.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..store import SignalStore
from .graph import model_state, round_topk
from .schedules import ratio_at

__all__ = ["OutOfCoreTeacher", "plan_round_size"]

OLDEST_SHARE = 0.25  # of each round's chunks, taken by staleness rather than error


def plan_round_size(store: SignalStore, memory_budget: int, width: int, depth: int) -> tuple[int, int]:
    """``(chunks per round, max training batch)`` that keep a round within the budget.

    A training step holds about ``width * depth * 16`` bytes of activations and gradients
    per sample; the round's candidates ``(8 + 4 (C + d))`` bytes per sample. Half the
    budget goes to each.
    """
    per_train = width * depth * 16
    max_batch = max(1024, min(1 << 20, (memory_budget // 2) // per_train))
    per_cand = 8 + 4 * (store.channels + store.ndim) + 4 * store.channels
    chunk_samples = math.prod(store.chunks)
    round_chunks = max(1, min(len(store.chunk_slices()), (memory_budget // 2) // max(1, per_cand * chunk_samples)))
    # More chunks than ~4 training batches of candidates only costs scoring time.
    round_chunks = max(1, min(round_chunks, math.ceil(4 * max_batch / chunk_samples)))
    return round_chunks, max_batch


class OutOfCoreTeacher:
    """Selects training batches from a store too large for memory, round by round.

    Parameters
    ----------
    cfg
        The `TeacherConfig` (ratio schedule, random share, scoring precision).
    store
        The signal store.
    total_steps
        T.
    generator
        Randomness for chunk tie-breaks, random shares and mini-batches (checkpointed).
    model_cfg, device
        To snapshot the model for the chunk tasks.
    memory_budget
        Bytes; sets chunks per round and the training batch.
    scheduler
        None (local threads) or a dask.distributed scheduler address.
    round_steps, round_chunks
        Override the plan (None = defaults).
    """

    def __init__(self, cfg, store: SignalStore, total_steps: int, generator: torch.Generator, *, model_cfg, device,
                 memory_budget: int, scheduler: str | None = None, round_steps: int | None = None,
                 round_chunks: int | None = None, prefetch: bool = True):
        self.cfg = cfg
        self.store = store
        self.total_steps = total_steps
        self.generator = generator
        self.model_cfg = model_cfg
        self.device = device
        self.slices = store.chunk_slices()
        self.n_chunks = len(self.slices)
        self.chunk_sizes = np.array([math.prod(s.stop - s.start for s in sl) for sl in self.slices], dtype=np.int64)
        planned_chunks, self.max_batch = plan_round_size(store, memory_budget, model_cfg.width, model_cfg.depth)
        self.round_chunks = min(self.n_chunks, round_chunks or planned_chunks)
        self.round_steps = round_steps or 10
        self.n_oldest = max(1, math.ceil(OLDEST_SHARE * self.round_chunks))
        # Per-chunk statistics: last mean L1 error (inf = never seen), last MSE, round last scored.
        self.mean_error = np.full(self.n_chunks, np.inf)
        self.mean_sq = np.full(self.n_chunks, np.nan)
        self.last_round = np.full(self.n_chunks, -1, dtype=np.int64)
        self.order = torch.randperm(self.n_chunks, generator=generator).numpy()  # tie-break among unseen
        self.round = 0
        self.round_start = None  # step the current round started at
        self.cands = None  # (coords tensor, targets tensor) of the current round
        self.score_dtype = cfg.score_dtype if cfg.score_dtype == "bfloat16" else None
        self._client = None
        if scheduler:
            from distributed import Client

            self._client = Client(scheduler)
        self._pool = ThreadPoolExecutor(1) if prefetch else None
        self._pending = None  # (round, chunk ids, snapshot, top-k ratio, future)

    # -- chunk level ---------------------------------------------------------------
    def _pick_chunks(self) -> np.ndarray:
        """This round's chunk ids: the stalest share, then the highest last mean error."""
        g = self.round_chunks
        # Staleness: never-seen first (in a seeded random order), then oldest round.
        rank = np.lexsort((np.argsort(self.order), self.last_round))
        oldest = rank[: self.n_oldest]
        rest = np.setdiff1d(np.arange(self.n_chunks), oldest, assume_unique=False)
        if g > len(oldest) and len(rest):
            err = np.where(np.isinf(self.mean_error[rest]), np.finfo(float).max, self.mean_error[rest])
            by_error = rest[np.lexsort((rest, -err))][: g - len(oldest)]
            picked = np.concatenate([oldest, by_error])
        else:
            picked = oldest[:g]
        return np.sort(picked)

    def _score(self, chunk_ids: np.ndarray, snapshot, k_ratio: float):
        slices = [self.slices[i] for i in chunk_ids]
        n = sum(math.prod(s.stop - s.start for s in sl) for sl in slices)
        k = max(1, math.floor(k_ratio * n))
        # Local threads score on the training device (the GPU when there is one);
        # distributed workers score on their own CPUs, next to the data.
        device = "cpu" if self._client is not None else str(self.device)
        return round_topk(self.store.path, slices, None, snapshot, k, score_dtype=self.score_dtype,
                          scheduler=self._client, device=device)

    def _start_round(self, step: int, model) -> None:
        ratio = ratio_at(self.cfg.ratio_schedule, step, self.total_steps, self.cfg.ratio)
        if self._pending is not None and self._pending[0] == self.round:
            _, chunk_ids, _, _, fut = self._pending
            cands, stats = fut.result()
        else:
            chunk_ids = self._pick_chunks()
            snap = model_state(self.model_cfg, model.state_dict())
            cands, stats = self._score(chunk_ids, snap, self._topk_ratio(ratio))
        self._pending = None
        for s, cid in zip(stats, chunk_ids):
            self.mean_error[cid] = s["mean"]
            if "sq_sum" in s:
                self.mean_sq[cid] = s["sq_sum"] / max(1, s["n"] * self.store.channels)
            self.last_round[cid] = self.round
        index, target = cands.index, cands.target
        n_random = round(self.cfg.random_share * len(index))
        if n_random:
            index, target = self._mix_random(chunk_ids, index, target, n_random)
        coords = torch.from_numpy(self.store.coords_at(index)).to(self.device)
        self.cands = (coords, torch.from_numpy(np.ascontiguousarray(target)).to(self.device))
        self.round_start = step
        self.round += 1
        if self._pool is not None:
            # Prefetch: choose and score the next round now, with this round's starting weights.
            nxt = self._pick_chunks()
            snap = model_state(self.model_cfg, model.state_dict())
            nxt_ratio = ratio_at(self.cfg.ratio_schedule, min(step + self.round_steps, self.total_steps - 1),
                                 self.total_steps, self.cfg.ratio)
            fut = self._pool.submit(self._score, nxt, snap, self._topk_ratio(nxt_ratio))
            self._pending = (self.round, nxt, snap, nxt_ratio, fut)

    def _topk_ratio(self, ratio: float) -> float:
        # The random share replaces part of the top-k; score only what top-k keeps.
        return ratio * (1.0 - self.cfg.random_share) if self.cfg.random_share < 1 else 0.0

    def _mix_random(self, chunk_ids, index, target, n_random):
        """Add ``n_random`` uniform samples from the round's chunks (not already selected)."""
        picks = []
        sizes = self.chunk_sizes[chunk_ids]
        total = int(sizes.sum())
        local = torch.randint(0, total, (n_random * 2,), generator=self.generator).numpy()
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for j, cid in enumerate(chunk_ids):
            sel = local[(local >= bounds[j]) & (local < bounds[j + 1])] - bounds[j]
            if len(sel):
                flat = self.store.block_flat_index(self.slices[cid])[np.unique(sel)]
                picks.append(flat)
        extra = np.setdiff1d(np.concatenate(picks) if picks else np.empty(0, np.int64), index)[:n_random]
        extra_t = self.store.targets_at(extra)
        return np.concatenate([index, extra]), np.concatenate([target, extra_t])

    # -- the loop's interface --------------------------------------------------------
    def batch(self, step: int, model):
        info = {"interval": self.round_steps, "selected": False}
        if self.cands is None or step - self.round_start >= self.round_steps:
            self._start_round(step, model)
            info["selected"] = True
        coords, targets = self.cands
        info["ratio"] = ratio_at(self.cfg.ratio_schedule, step, self.total_steps, self.cfg.ratio)
        n = coords.shape[0]
        if n <= self.max_batch:
            return coords, targets, info
        pick = torch.randint(0, n, (self.max_batch,), generator=self.generator).to(coords.device)
        return coords[pick], targets[pick], info

    def estimated_mse(self) -> float | None:
        """Sample-weighted mean of the chunks' last measured MSE (None before any)."""
        seen = ~np.isnan(self.mean_sq)
        if not seen.any():
            return None
        sizes = self.chunk_sizes[seen].astype(np.float64)
        return float((self.mean_sq[seen] * sizes).sum() / sizes.sum())

    def state_dict(self) -> dict:
        state = {
            "mean_error": torch.from_numpy(self.mean_error.copy()),
            "mean_sq": torch.from_numpy(self.mean_sq.copy()),
            "last_round": torch.from_numpy(self.last_round.copy()),
            "order": torch.from_numpy(self.order.copy()),
            "round": self.round,
            "round_start": self.round_start,
            "cands": None if self.cands is None else [t.cpu() for t in self.cands],
            "pending": None,
        }
        if self._pending is not None:
            rnd, ids, snap, ratio, _ = self._pending
            state["pending"] = {"round": rnd, "chunks": torch.from_numpy(ids.copy()), "state": snap.state, "ratio": ratio}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.mean_error = state["mean_error"].numpy().copy()
        self.mean_sq = state["mean_sq"].numpy().copy()
        self.last_round = state["last_round"].numpy().copy()
        self.order = state["order"].numpy().copy()
        self.round = int(state["round"])
        self.round_start = state["round_start"]
        self.cands = None if state["cands"] is None else tuple(t.to(self.device) for t in state["cands"])
        pending = state.get("pending")
        if pending is not None and self._pool is not None:
            ids = pending["chunks"].numpy()
            snap = model_state(self.model_cfg, pending["state"])
            fut = self._pool.submit(self._score, ids, snap, self._topk_ratio(pending["ratio"]))
            self._pending = (pending["round"], ids, snap, pending["ratio"], fut)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            self._client.close()
