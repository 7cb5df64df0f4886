"""Out-of-core teaching: rounds over groups of Zarr chunks (DESIGN §5, §11).

Every strategy means what it means in core, read from the store chunk by chunk:

``intstream`` (importance weighting, the default) and ``random``
    Each selection is a round. Chunk level: every chunk's share of the round's ``k``
    samples follows ``q_c = (1 - a) E_c / sum(E) + a n_c / N`` from its estimated error
    mass ``E_c`` (never-scored chunks count as the largest), so every chunk keeps being
    visited. When the memory plan holds every chunk in a round (``G >= n_chunks``), each
    chunk draws ``k_c ~ k q_c`` samples (largest remainders, at least one: a stratified
    round); otherwise the round draws ``G`` chunks with replacement by ``q`` and each
    drawn chunk ``k_c ~ k m_c / G`` samples (``m_c`` times drawn). Sample level: the
    ``ceil(pool n_chunks)`` chunks that draw the most (the in-core pool's share) are
    scored in their Dask task with a snapshot of the weights and draw with
    ``p = (1 - a) e / sum(e) + a / n_c`` (`graph.draw_chunks`); the round's other chunks
    are only read and draw uniformly (``p = 1 / n_c``). Only the draws and the chunks'
    error sums leave the tasks, merged by a ``split_every`` tree. Each draw is weighted
    ``k m_c / (N E[m_c] k_c p)`` (``E[m_c]`` = ``G q_c``, or 1 in a stratified round), so
    the step's loss is an unbiased estimate of the full-signal MSE whatever the
    staleness of the estimates. The training forward refreshes ``E_c`` of every drawn
    chunk (an importance estimate under the current weights), the next round is drawn
    and scored in the background while this one trains, and selections follow the same
    interval and ratio schedules as in core. ``random`` is the same with ``a = 1``
    (uniform draws, unit weights, nothing scored).

    Drawing from every chunk, not only from the scored ones, is what makes the round
    match the in-core teacher (bench_teachers.py --out-of-core): a round of the scored
    quarter of the chunks alone gave unbiased but spatially lumped steps, 6 dB behind.
``int``
    The paper's mini-batch INT (DESIGN §4): the chunks are split into fixed mini-batches
    (strided chunk groups, so each covers the signal evenly); step ``t`` trains mini-batch
    ``t mod M`` (one optimiser step per mini-batch), epoch ``t // M`` drives the paper's
    ratio and interval schedules, each mini-batch keeps **its own** cached top-k subset
    (the reference code's reuse of the last mini-batch's subset is not copied), and
    gradients are clipped to norm 0.1 as in the paper's megapixel run.
``full``
    Every sample every step, streamed chunk group by chunk group (the loop accumulates
    the exact full-signal gradient).

Memory is bounded by the round (the draws, one chunk per scoring thread, one round's
chunks kept decoded, one chunk group while streaming), never by the signal.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from ..errors import InputError
from ..store import SignalStore
from . import maps
from .graph import clear_block_cache, model_state, round_draws, round_topk
from .protocol import Batch
from .schedules import interval_at, ratio_at, select_count, selection_steps

__all__ = ["rounds_teacher", "ImportanceRounds", "MiniBatchINT", "FullRounds", "plan_round_size"]


def plan_round_size(store: SignalStore, memory_budget: int, width: int, depth: int) -> tuple[int, int]:
    """``(chunks per round, max samples per round)`` of the memory plan for ``store`` in rounds.

    A thin view of `intstream.plan.plan_fit` (forced out of core, the default teacher, the
    MLP's parameter count): the planner owns every estimate (DESIGN §10).
    """
    from ..plan import plan_fit

    params = (store.ndim + 1) * width + (depth - 2) * (width + 1) * width + (width + 1) * store.channels
    plan = plan_fit(memory_budget, n_samples=store.n_samples, ndim=store.ndim, channels=store.channels,
                    itemsize=np.dtype(store.meta["dtype"]).itemsize, chunk_samples=math.prod(store.chunks),
                    n_chunks=len(store.chunk_slices()), width=width, depth=depth, params=params,
                    out_of_core=True)
    return plan.round_chunks, plan.round_samples


class _Rounds:
    """What every out-of-core teacher shares: the store, per-chunk statistics, snapshots,
    the Dask client and the estimated MSE."""

    grad_clip: float | None = None
    out_of_core = True

    def __init__(self, cfg, store: SignalStore, total_steps: int, generator: torch.Generator, *, model_cfg, device,
                 round_chunks: int, max_samples: int, score_batch: int = 65536, scheduler: str | None = None,
                 prefetch: bool = True):
        self.cfg = cfg
        self.store = store
        self.total_steps = total_steps
        self.generator = generator
        self.model_cfg = model_cfg
        self.device = device
        self.slices = store.chunk_slices()
        self.n_chunks = len(self.slices)
        self.chunk_sizes = np.array([math.prod(s.stop - s.start for s in sl) for sl in self.slices], dtype=np.int64)
        self.n = int(self.chunk_sizes.sum())
        self.round_chunks = max(1, min(self.n_chunks, int(round_chunks)))
        self.max_samples = max(1, int(max_samples))
        self.score_batch = score_batch
        self.score_dtype = cfg.score_dtype if cfg.score_dtype == "bfloat16" else None
        # Per chunk: estimated error mass (sum of L1 errors; nan = never scored), mean
        # squared error per value (nan = unknown), and the round it was last scored in.
        self.err_mass = np.full(self.n_chunks, np.nan)
        self.mean_sq = np.full(self.n_chunks, np.nan)
        self.last_round = np.full(self.n_chunks, -1, dtype=np.int64)
        self.round = 0
        # For `sample_map` only (never read by a selection): samples trained on per map cell.
        self.map_shape = maps.map_shape(store.shape)
        self.count = np.zeros(math.prod(self.map_shape), dtype=np.int64)
        self._hist: np.ndarray | None = None  # the current batch's samples per cell
        self._client = None
        if scheduler:
            from distributed import Client

            self._client = Client(scheduler)
        self._pool = ThreadPoolExecutor(1) if prefetch else None

    @property
    def _score_device(self) -> str:
        # Local threads score on the training device; distributed workers on their own CPUs.
        return "cpu" if self._client is not None else str(self.device)

    def _snapshot(self, model):
        return model_state(self.model_cfg, model.state_dict())

    def _record(self, chunk_ids: np.ndarray, stats: list[dict]) -> None:
        for s in stats:
            if "sum" not in s:  # read, not scored
                continue
            cid = chunk_ids[s["chunk"]]
            self.err_mass[cid] = s["sum"]
            self.mean_sq[cid] = s["sq_sum"] / max(1, s["n"] * self.store.channels)
            self.last_round[cid] = self.round

    def _part(self, index: np.ndarray, target: np.ndarray):
        coords = torch.from_numpy(self.store.coords_at(index)).to(self.device)
        return coords, torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)).to(self.device)

    def observe(self, pred: torch.Tensor) -> None:
        pass

    def _cell_counts(self, flat_index: np.ndarray) -> np.ndarray:
        return np.bincount(maps.cell_of(np.asarray(flat_index, dtype=np.int64), self.store.shape),
                           minlength=len(self.count))

    def _trained(self, hist: np.ndarray) -> None:
        """Count one step's batch (its samples per map cell)."""
        self._hist = hist
        self.count += hist

    def sample_map(self, model) -> dict[str, np.ndarray]:
        """Per chunk, the latest estimate of the mean error per sample (the chunks' error
        mass over their size; NaN for chunks never scored), and the samples trained on per cell."""
        err = maps.chunk_grid(self.err_mass / self.chunk_sizes, self.chunk_sizes, self.store.shape,
                              self.store.chunks, mean=True)
        return {"error": err, "selected": self.count.astype(np.float32).reshape(self.map_shape)}

    def train_mse(self, model, exact: bool = False) -> tuple[float | None, bool]:
        """Sample-weighted mean of the chunks' latest MSE estimates (None before any), or
        with ``exact`` the MSE over every sample, streamed chunk by chunk."""
        if exact:
            from ..models import predict

            sq = 0.0
            for sl in self.slices:
                coords, targets = self.store.block_samples(sl)
                pred = predict(model, torch.from_numpy(coords), batch=self.score_batch).cpu()
                sq += float((pred - torch.from_numpy(targets)).double().square().sum())
            return sq / (self.n * self.store.channels), True
        seen = ~np.isnan(self.mean_sq)
        if not seen.any():
            return None, False
        sizes = self.chunk_sizes[seen].astype(np.float64)
        return float((self.mean_sq[seen] * sizes).sum() / sizes.sum()), False

    def _stats_state(self) -> dict:
        return {"err_mass": torch.from_numpy(self.err_mass.copy()), "mean_sq": torch.from_numpy(self.mean_sq.copy()),
                "last_round": torch.from_numpy(self.last_round.copy()), "round": self.round,
                "count": torch.from_numpy(self.count.copy()),
                "hist": None if self._hist is None else torch.from_numpy(self._hist.copy())}

    def _load_stats(self, state: dict) -> None:
        self.err_mass = state["err_mass"].numpy().copy()
        self.mean_sq = state["mean_sq"].numpy().copy()
        self.last_round = state["last_round"].numpy().copy()
        self.round = int(state["round"])
        count = state.get("count")  # older checkpoints: none
        if count is not None and count.numel() == len(self.count):
            self.count = count.numpy().copy()
        hist = state.get("hist")
        self._hist = hist.numpy().copy() if hist is not None and hist.numel() == len(self.count) \
            else np.zeros_like(self.count)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        clear_block_cache()
        if self._client is not None:
            self._client.close()


class _Plan(NamedTuple):
    """One importance round, decided before it is scored (so it can be prefetched and resumed)."""

    chunks: np.ndarray  # distinct chunk ids
    times: np.ndarray  # m_c: how often each was drawn
    draws: np.ndarray  # k_c: samples each draws
    seeds: np.ndarray  # one NumPy seed per chunk task
    expect: np.ndarray  # E[m_c]: G q_c when G chunks are drawn with replacement, 1 when every chunk is in
    shares: np.ndarray  # each chunk task's uniform share (1 = uniform draws, the chunk read but not scored)


def _allocate(k: int, share: np.ndarray) -> np.ndarray:
    """``k`` draws split by ``share`` (summing to 1): largest remainders, at least one each."""
    raw = k * share
    out = np.maximum(1, np.floor(raw).astype(np.int64))
    left = k - int(out.sum())
    if left > 0:
        out[np.argsort(-(raw - np.floor(raw)), kind="stable")[:left]] += 1
    return out


class ImportanceRounds(_Rounds):
    """intstream's default teacher out of core (and ``random`` with ``a = 1``); see the module notes."""

    def __init__(self, cfg, store, total_steps, generator, **kw):
        super().__init__(cfg, store, total_steps, generator, **kw)
        self.share = 1.0 if cfg.strategy == "random" else float(cfg.random_share)
        # The in-core pool re-scores this share of the samples per selection; a round scores
        # as many chunks (those that draw the most), the rest of its chunks draw uniformly.
        self.scored_chunks = max(1, math.ceil(cfg.pool * self.n_chunks))
        self._select_at = set(selection_steps(cfg.interval_schedule, total_steps))
        self.current = None  # (coords, targets, weight, chunk position, p_local, plan)
        self._pending = None  # (plan, snapshot, future)

    def _plan(self, step: int) -> _Plan:
        ratio = ratio_at(self.cfg.ratio_schedule, min(step, self.total_steps - 1), self.total_steps, self.cfg.ratio)
        g = self.round_chunks
        k = max(g, min(select_count(ratio, self.n), self.max_samples))
        per_sample = self.err_mass / self.chunk_sizes
        seen = ~np.isnan(per_sample)
        top = per_sample[seen].max() if seen.any() else 1.0
        mass = np.where(seen, self.err_mass, max(top, 1e-12) * self.chunk_sizes)  # unseen: the largest
        total = mass.sum()
        a = self.share if total > 0 else 1.0
        q = (1.0 - a) * mass / max(total, 1e-300) + a * self.chunk_sizes / self.n
        if g >= self.n_chunks:  # every chunk is in the round: its share of the draws is q_c
            chunks = np.arange(self.n_chunks)
            m = expect = np.ones(self.n_chunks)
            draws = _allocate(k, q)
        else:  # G chunks drawn with replacement by q
            picks = torch.multinomial(torch.from_numpy(q), g, replacement=True, generator=self.generator)
            times = np.bincount(picks.numpy(), minlength=self.n_chunks)
            chunks = np.nonzero(times)[0]
            m = times[chunks]
            expect = g * q[chunks]
            draws = _allocate(k, m / g)
        shares = np.ones(len(chunks))
        if self.share < 1.0:  # importance draws in the chunks that draw the most (stalest first on ties)
            order = np.lexsort((self.last_round[chunks], -draws))
            shares[order[: self.scored_chunks]] = self.share
        seeds = torch.randint(0, 2**62, (len(chunks),), generator=self.generator).numpy()
        return _Plan(chunks, m, draws, seeds, expect, shares)

    def _score(self, plan: _Plan, snapshot):
        return round_draws(self.store.path, [self.slices[c] for c in plan.chunks], snapshot, plan.draws, plan.seeds,
                           uniform_share=plan.shares, score_dtype=self.score_dtype, batch=self.score_batch,
                           device=self._score_device, keep=self.round_chunks, scheduler=self._client)

    def _submit(self, plan: _Plan, snapshot) -> None:
        fut = self._pool.submit(self._score, plan, snapshot)
        self._pending = (plan, snapshot, fut)

    def _select(self, step: int, model) -> None:
        if self._pending is not None:
            plan, _, fut = self._pending
            draws, stats = fut.result()
        else:
            plan = self._plan(step)
            draws, stats = self._score(plan, self._snapshot(model))
        self._pending = None
        self._record(plan.chunks, stats)
        k = len(draws.index)
        pos = draws.chunk
        weight = k * plan.times[pos] / (self.n * plan.expect[pos] * plan.draws[pos] * draws.p_local)
        coords, targets = self._part(draws.index, draws.target)
        self.current = (coords, targets, torch.from_numpy(weight.astype(np.float32)).to(self.device),
                        torch.from_numpy(pos).to(self.device), torch.from_numpy(draws.p_local).to(self.device), plan)
        self._hist = self._cell_counts(draws.index)
        self.round += 1
        if self._pool is not None:  # the next round, drawn now and scored while this one trains
            self._submit(self._plan(step + 1), self._snapshot(model))

    def batch(self, step: int, model) -> Batch:
        selected = self.current is None or step in self._select_at
        if selected:
            self._select(step, model)
        coords, targets, weight = self.current[:3]
        self._trained(self._hist)
        ratio = coords.shape[0] / self.n
        interval = interval_at(self.cfg.interval_schedule, step, self.total_steps)
        return Batch([(coords, targets, weight)], int(coords.shape[0]), ratio, interval, selected)

    def observe(self, pred: torch.Tensor) -> None:
        """Refresh the drawn chunks' error mass and MSE with importance estimates from the
        training forward (the current weights, for free)."""
        coords, targets, _, pos, p_local, plan = self.current
        diff = pred.detach() - targets
        n_pos = len(plan.chunks)
        k_c = torch.from_numpy(plan.draws).to(diff.device, torch.float64)
        err = torch.zeros(n_pos, dtype=torch.float64, device=diff.device)
        sq = torch.zeros(n_pos, dtype=torch.float64, device=diff.device)
        err.index_add_(0, pos, diff.abs().sum(1).double() / p_local)
        sq.index_add_(0, pos, diff.square().sum(1).double() / p_local)
        sizes = self.chunk_sizes[plan.chunks]
        self.err_mass[plan.chunks] = (err / k_c).cpu().numpy()
        self.mean_sq[plan.chunks] = (sq / k_c).cpu().numpy() / (sizes * self.store.channels)

    def state_dict(self) -> dict:
        state = self._stats_state()
        state["current"] = None
        state["pending"] = None
        if self.current is not None:
            *tensors, plan = self.current
            state["current"] = {"tensors": [t.cpu() for t in tensors], "plan": _plan_state(plan)}
        if self._pending is not None:
            plan, snap, _ = self._pending
            state["pending"] = {"plan": _plan_state(plan), "state": snap.state}
        return state

    def load_state_dict(self, state: dict) -> None:
        self._load_stats(state)
        cur, pending = state["current"], state["pending"]
        plan = None if cur is None else _plan_from(cur["plan"])
        # A round of an older checkpoint (no per-chunk shares) is drawn anew at the next step.
        self.current = None if plan is None else (*(t.to(self.device) for t in cur["tensors"]), plan)
        plan = None if pending is None else _plan_from(pending["plan"])
        if plan is not None and self._pool is not None:
            self._submit(plan, model_state(self.model_cfg, pending["state"]))


def _plan_state(plan: _Plan) -> dict:
    return {f: torch.from_numpy(np.asarray(getattr(plan, f)).copy()) for f in _Plan._fields}


def _plan_from(state: dict) -> _Plan | None:
    """The saved plan, or None for one saved before its fields were these."""
    if any(f not in state for f in _Plan._fields):
        return None
    return _Plan(*(state[f].numpy().copy() for f in _Plan._fields))


class MiniBatchINT(_Rounds):
    """The paper's mini-batch INT out of core; see the module notes."""

    grad_clip = 0.1

    def __init__(self, cfg, store, total_steps, generator, **kw):
        super().__init__(cfg, store, total_steps, generator, **kw)
        if cfg.random_share:
            raise InputError(None, "--random-share: the paper's mini-batch INT (--strategy int out of core) "
                                   "selects by top-k only; use --strategy intstream for mixed draws")
        self.n_batches = math.ceil(self.n_chunks / self.round_chunks)
        self.groups = [np.arange(m, self.n_chunks, self.n_batches) for m in range(self.n_batches)]
        self.epochs = max(1, math.ceil(total_steps / self.n_batches))
        self._select_at = set(selection_steps(cfg.interval_schedule, self.epochs))
        self.cache: list = [None] * self.n_batches  # per mini-batch: (index, target, epoch selected)
        self._hists: list = [None] * self.n_batches  # per mini-batch: its cached subset's samples per cell

    def batch(self, step: int, model) -> Batch:
        m, epoch = step % self.n_batches, step // self.n_batches
        group = self.groups[m]
        n_m = int(self.chunk_sizes[group].sum())
        ratio = ratio_at(self.cfg.ratio_schedule, min(epoch, self.epochs - 1), self.epochs, self.cfg.ratio)
        cached = self.cache[m]
        selected = cached is None or (epoch in self._select_at and cached[2] != epoch)
        if selected:
            k = min(select_count(ratio, n_m), self.max_samples)
            cands, stats = round_topk(self.store.path, [self.slices[c] for c in group], None, self._snapshot(model), k,
                                      score_dtype=self.score_dtype, batch=self.score_batch,
                                      device=self._score_device, scheduler=self._client)
            self._record(group, stats)
            self.round += 1
            self.cache[m] = cached = (cands.index, cands.target, epoch)
        if selected or self._hists[m] is None:
            self._hists[m] = self._cell_counts(cached[0])
        self._trained(self._hists[m])
        coords, targets = self._part(cached[0], cached[1])
        interval = interval_at(self.cfg.interval_schedule, min(epoch, self.epochs - 1), self.epochs)
        return Batch([(coords, targets, None)], int(coords.shape[0]), coords.shape[0] / n_m, interval, selected)

    def state_dict(self) -> dict:
        state = self._stats_state()
        state["cache"] = [None if c is None else {"index": torch.from_numpy(c[0]), "target": torch.from_numpy(c[1]),
                                                  "epoch": c[2]} for c in self.cache]
        return state

    def load_state_dict(self, state: dict) -> None:
        self._load_stats(state)
        self.cache = [None if c is None else (c["index"].numpy().copy(), c["target"].numpy().copy(), int(c["epoch"]))
                      for c in state["cache"]]


class FullRounds(_Rounds):
    """Every sample every step, streamed in groups of ``round_chunks`` chunks."""

    def __init__(self, cfg, store, total_steps, generator, **kw):
        super().__init__(cfg, store, total_steps, generator, **kw)
        self._part_chunks = None
        self._part_targets = None
        self._all = None  # every sample's map cell counts

    def _parts(self):
        for start in range(0, self.n_chunks, self.round_chunks):
            ids = np.arange(start, min(start + self.round_chunks, self.n_chunks))
            blocks = [self.store.block_samples(self.slices[c]) for c in ids]
            coords = torch.from_numpy(np.concatenate([b[0] for b in blocks])).to(self.device)
            targets = torch.from_numpy(np.concatenate([b[1] for b in blocks])).to(self.device)
            self._part_chunks, self._part_targets = ids, targets
            yield coords, targets, None

    def batch(self, step: int, model) -> Batch:
        self.round += 1
        if self._all is None:
            self._all = maps.cell_sizes(self.store.shape)
        self._trained(self._all)
        return Batch(self._parts(), self.n, 1.0, 1, True)

    def observe(self, pred: torch.Tensor) -> None:
        """The part's squared errors: the chunks' MSE of the weights before this step."""
        diff = pred.detach() - self._part_targets
        sq = diff.square().sum(1).double().cpu().numpy()
        l1 = diff.abs().sum(1).double().cpu().numpy()
        bounds = np.concatenate([[0], np.cumsum(self.chunk_sizes[self._part_chunks])])
        for j, c in enumerate(self._part_chunks):
            self.mean_sq[c] = sq[bounds[j]:bounds[j + 1]].sum() / (self.chunk_sizes[c] * self.store.channels)
            self.err_mass[c] = l1[bounds[j]:bounds[j + 1]].sum()
            self.last_round[c] = self.round

    def state_dict(self) -> dict:
        return self._stats_state()

    def load_state_dict(self, state: dict) -> None:
        self._load_stats(state)


def rounds_teacher(cfg, store: SignalStore, total_steps: int, generator: torch.Generator, **kw) -> _Rounds:
    """The out-of-core teacher for ``cfg.strategy`` (see the module notes)."""
    if cfg.strategy == "full":
        return FullRounds(cfg, store, total_steps, generator, **kw)
    if cfg.strategy == "int" and cfg.weighting != "importance":
        return MiniBatchINT(cfg, store, total_steps, generator, **kw)
    return ImportanceRounds(cfg, store, total_steps, generator, **kw)
