"""Dask wiring of one out-of-core INT round (DESIGN §5): chunk error maps -> tree top-k.

Each chunk task opens the store itself (by path, so it runs the same in a thread or on a
``dask.distributed`` worker next to the data), rebuilds the model from a state-dict
snapshot (cached per process, keyed by a content token, so a 100-chunk round builds it once
per worker), scores its samples with a no-grad forward and returns only its local top-k
`Candidates` plus its error statistics. A tree of `combine_topk` tasks, ``split_every``
wide, merges those into the round's global top-k. The pure kernels live in `topk`.

Exactness: every chunk keeps ``min(k, n_chunk)`` candidates unless told otherwise
(``chunk_k``), so the merged result is exactly the global top-k, in (error desc, index asc)
order -- the same as ``np.argsort(-error, kind="stable")[:k]`` over the round's samples.

Threads (2-core CPU, SIREN 6x256, see ``round_topk``): torch's intra-op threads are
process-wide, so with ``T`` dask threads the round sets torch to ``cores // T`` threads
for its duration and restores it after; distributed worker processes already start with
``OMP_NUM_THREADS=1`` (dask's nanny default), one torch thread per worker thread.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple, Sequence

import numpy as np

from .topk import Candidates, chunk_error, chunk_topk, combine_topk

__all__ = ["Draws", "ModelState", "clear_block_cache", "draw_chunks", "model_state", "round_draws", "round_graph",
           "round_topk", "score_chunk"]

# How many distinct model versions a process keeps built (current round + prefetch of next).
_MODEL_CACHE_SIZE = 2
_model_cache: "OrderedDict[tuple, object]" = OrderedDict()
_model_lock = threading.Lock()
_store_cache: "OrderedDict[tuple, object]" = OrderedDict()
_store_lock = threading.Lock()
# Decoded chunks (coords, targets) a process keeps for the rounds that draw from them
# again (`draw_chunks`' ``keep``: the memory plan's chunks per round).
_block_cache: "OrderedDict[tuple, tuple]" = OrderedDict()
_block_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class ModelState:
    """A picklable snapshot of a model: its config dict, CPU tensors and a content token."""

    cfg: dict
    state: dict
    token: str


def model_state(model_cfg, state_dict: dict, *, token: str | None = None) -> ModelState:
    """Snapshot ``state_dict`` (copied to CPU, so training may go on) with a content token.

    Parameters
    ----------
    model_cfg
        A `ModelConfig` (or its dict).
    state_dict
        The model's ``state_dict()``; tensors on any device.
    token
        A caller-chosen version string (e.g. ``f"{run_id}-{step}"``); by default a
        blake2b hash of the config and tensor bytes (~1 ms per MB).
    """
    import torch

    cfg = model_cfg if isinstance(model_cfg, dict) else model_cfg.to_dict()
    snap = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in state_dict.items()}
    if token is None:
        h = hashlib.blake2b(json.dumps(cfg, sort_keys=True).encode(), digest_size=16)
        for name, t in snap.items():
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        token = h.hexdigest()
    return ModelState(cfg, snap, str(token))


def _cached_model(ms: ModelState, device: str):
    """The model for ``ms`` on ``device``, built once per process and version.

    Forward passes under no_grad only read parameters, so threads share one instance.
    """
    from ..models import ModelConfig, build_model

    key = (ms.token, device)
    with _model_lock:
        model = _model_cache.get(key)
        if model is None:
            model = build_model(ModelConfig.from_dict(ms.cfg))
            model.load_state_dict(ms.state)
            model = model.to(device).eval().requires_grad_(False)
            _model_cache[key] = model
            while len(_model_cache) > _MODEL_CACHE_SIZE:
                _model_cache.popitem(last=False)
        else:
            _model_cache.move_to_end(key)
        return model


def _cached_store(path: str):
    """An opened `SignalStore`, reused while its metadata file is unchanged."""
    from ..store import open_store, store_cache_key

    key = store_cache_key(path)  # a local path or a store URL
    with _store_lock:
        store = _store_cache.get(key)
        if store is None:
            store = open_store(path)
            _store_cache[key] = store
            while len(_store_cache) > 8:
                _store_cache.popitem(last=False)
        return store


def _cached_block(store_path: str, slices: tuple[slice, ...], keep: int):
    """``(store, coords, targets)`` of one chunk; with ``keep > 0`` the last ``keep`` chunks
    read by this process stay decoded (shared, never written), so rounds that draw from the same
    chunks again skip Zarr's ~1.5 ms per chunk read and decode."""
    from ..store import store_cache_key

    store = _cached_store(store_path)
    if keep <= 0:
        return (store, *store.block_samples(slices))
    key = (store_cache_key(store_path), tuple((sl.start, sl.stop) for sl in slices))
    with _block_lock:
        hit = _block_cache.get(key)
        if hit is not None:
            _block_cache.move_to_end(key)
            return (store, *hit)
    coords, targets = store.block_samples(slices)  # shared by threads: never written
    with _block_lock:
        _block_cache[key] = (coords, targets)
        while len(_block_cache) > keep:
            _block_cache.popitem(last=False)
    return store, coords, targets


def clear_block_cache() -> None:
    """Drop the decoded chunks `draw_chunks` kept in this process."""
    with _block_lock:
        _block_cache.clear()


def _dtype_name(score_dtype) -> str | None:
    if score_dtype is None:
        return None
    name = str(score_dtype).replace("torch.", "")
    if name in ("bfloat16", "bf16"):
        return "bfloat16"
    if name in ("float32", "fp32"):
        return None
    raise ValueError(f"score_dtype must be None, 'float32' or 'bfloat16' (got {score_dtype!r})")


def _predict_chunk(ms: ModelState, store_path: str, slices: tuple[slice, ...], *,
                   score_dtype: str | None, batch: int, device: str, keep: int = 0):
    """``(store, predictions, targets)`` of one chunk under the snapshot (cached per worker;
    ``keep``: see `_cached_block`)."""
    store, coords, targets = _cached_block(store_path, slices, keep)
    return store, _score_forward(ms, coords, score_dtype=score_dtype, batch=batch, device=device), targets


def _score_forward(ms: ModelState, coords: np.ndarray, *, score_dtype: str | None, batch: int,
                   device: str) -> np.ndarray:
    """Predictions of the snapshot (cached per worker) for ``coords``, no grad."""
    import torch

    from ..models import predict

    dtype = torch.bfloat16 if _dtype_name(score_dtype) == "bfloat16" else None
    return predict(_cached_model(ms, device), torch.from_numpy(coords), batch=batch, dtype=dtype).cpu().numpy()


def score_chunk(
    ms: ModelState,
    store_path: str,
    slices: tuple[slice, ...],
    k: int,
    *,
    chunk_id: int = 0,
    score_dtype: str | None = None,
    batch: int = 65536,
    device: str = "cpu",
) -> tuple[Candidates, list[dict]]:
    """Score one chunk and keep its top-``k`` (the leaf task of `round_graph`).

    Returns
    -------
    (Candidates, [stats])
        The chunk's top-k with global flat indices, and a one-item list of its error
        statistics ``{"chunk", "start", "stop", "n", "sum", "mean", "max"}``.
    """
    store, pred, targets = _predict_chunk(ms, store_path, slices, score_dtype=score_dtype, batch=batch, device=device)
    err = chunk_error(pred, targets)
    # Squared error too: the out-of-core loop estimates the PSNR from the chunks' last scores.
    sq_sum = float(np.square(pred - targets, dtype=np.float64).sum())
    n = err.shape[0]
    # Rank by local row-major position: inside a row-major grid block it orders samples
    # exactly like their global flat index, and only the k winners need the global index.
    cand = chunk_topk(np.arange(n, dtype=np.int64), targets, err, k)
    block_shape = tuple(s.stop - s.start for s in slices)
    local = np.unravel_index(cand.index, block_shape)
    glob = tuple(ix + s.start for ix, s in zip(local, slices))
    cand = cand._replace(index=np.ravel_multi_index(glob, store.shape).astype(np.int64))
    total = float(err.sum(dtype=np.float64))
    stats = {
        "chunk": int(chunk_id),
        "start": [int(s.start) for s in slices],
        "stop": [int(s.stop) for s in slices],
        "n": int(n),
        "sum": total,
        "mean": total / n if n else 0.0,
        "max": float(err.max()) if n else 0.0,
        "sq_sum": sq_sum,
    }
    return cand, [stats]


def _combine(parts: list, k: int) -> tuple[Candidates, list[dict]]:
    """Tree node: merge children's candidates (exact top-k) and concatenate their stats."""
    cands = combine_topk([p[0] for p in parts], k)
    stats = [s for p in parts for s in p[1]]
    return cands, stats


def _normalise_slices(s) -> tuple[slice, ...]:
    out = []
    for x in s:
        if isinstance(x, slice):
            out.append(slice(int(x.start), int(x.stop)))
        else:  # (start, stop) pairs, e.g. from JSON stats
            out.append(slice(int(x[0]), int(x[1])))
    return tuple(out)


def round_graph(
    store_path: str | os.PathLike,
    chunk_slices: Sequence[tuple[slice, ...]],
    model_cfg,
    state_dict: "dict | ModelState",
    k: int | None,
    *,
    chunk_k: int | Sequence[int] | None = None,
    split_every: int = 8,
    score_dtype=None,
    batch: int = 65536,
    device: str = "cpu",
):
    """The Dask graph of one round, as a `dask.delayed.Delayed` (not computed).

    Computing it yields ``(Candidates, chunk_stats)``; use it directly to prefetch a round
    (``client.compute(graph)``, or ``dask.compute`` in a background thread).

    Parameters
    ----------
    store_path
        The signal store (each task opens it itself).
    chunk_slices
        Grid slices of this round's chunks (e.g. a subset of ``SignalStore.chunk_slices()``);
        they should not overlap.
    model_cfg, state_dict
        `ModelConfig` (or dict) and the model's ``state_dict()``, or a prepared `ModelState`
        (then ``model_cfg`` is ignored).
    k
        Global number of samples to select; ``None`` keeps the union of the per-chunk
        selections (``chunk_k`` is then required: mini-batch INT's top-k within each batch).
    chunk_k
        Per-chunk cap (an int, or one per chunk). Default ``k``, which makes the result
        the exact global top-k; a smaller cap is a quota per chunk.
    split_every
        Fan-in of the reduction tree (>= 2).
    score_dtype
        ``None``/``"float32"`` or ``"bfloat16"`` (bf16 autocast for the scoring forward).
    batch, device
        Forward batch size and the device the chunk tasks score on.
    """
    from dask.base import tokenize

    slices_list = [_normalise_slices(s) for s in chunk_slices]
    if not slices_list:
        raise ValueError("a round needs at least one chunk")
    if k is None and chunk_k is None:
        raise ValueError("give k (global top-k) or chunk_k (per-chunk top-k)")
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0 (got {k})")
    n_chunks = len(slices_list)
    if chunk_k is None:
        keeps = [k] * n_chunks
    elif isinstance(chunk_k, (int, np.integer)):
        keeps = [int(chunk_k)] * n_chunks
    else:
        keeps = [int(c) for c in chunk_k]
        if len(keeps) != n_chunks:
            raise ValueError(f"chunk_k has {len(keeps)} entries for {n_chunks} chunks")
    if k is not None:
        keeps = [min(c, k) for c in keeps]
    merge_k = sys.maxsize if k is None else int(k)
    ms = state_dict if isinstance(state_dict, ModelState) else model_state(model_cfg, state_dict)
    dtype_name = _dtype_name(score_dtype)
    store_path = os.fspath(store_path)
    name = tokenize(ms.token, os.path.abspath(store_path), slices_list, keeps, merge_k, dtype_name, batch, device)

    leaves = [partial(score_chunk, store_path=store_path, slices=sl, k=keep, chunk_id=i, score_dtype=dtype_name,
                      batch=batch, device=device) for i, (sl, keep) in enumerate(zip(slices_list, keeps))]
    return _tree(ms, leaves, partial(_combine, k=merge_k), split_every, name, "intstream-score", "intstream-topk")


def _tree(ms: ModelState, leaves: list, combine, split_every: int, name: str, leaf_prefix: str, node_prefix: str):
    """A round's graph: one task per chunk (``leaf(ms)``) under a real reduction tree (each
    node merges at most ``split_every`` children, until one is left; the root always runs,
    so a one-chunk round is shaped like any other), as a `~dask.delayed.Delayed`.

    Built as a plain task dict whose callables carry their arguments (`functools.partial`):
    `dask.delayed` calls spent ~0.8 ms per task traversing and tokenising them, more than a
    32² chunk's scoring. The snapshot enters the graph once, as its own key: distributed
    ships it to each worker once rather than embedding ~1 MB in every chunk task.
    """
    from dask.delayed import Delayed

    if split_every < 2:
        raise ValueError(f"split_every must be >= 2 (got {split_every})")
    ms_key = f"intstream-model-{ms.token}"
    dsk: dict = {ms_key: ms}
    level = []
    for i, leaf in enumerate(leaves):
        key = f"{leaf_prefix}-{name}-{i}"
        dsk[key] = (leaf, ms_key)
        level.append(key)
    depth = 0
    while True:
        nodes = []
        for i in range(0, len(level), split_every):
            key = f"{node_prefix}-{name}-{depth}-{i // split_every}"
            dsk[key] = (combine, level[i : i + split_every])
            nodes.append(key)
        level = nodes
        depth += 1
        if len(level) == 1:
            return Delayed(level[0], dsk)


def round_topk(
    store_path: str | os.PathLike,
    chunk_slices: Sequence[tuple[slice, ...]],
    model_cfg,
    state_dict: "dict | ModelState",
    k: int | None,
    *,
    scheduler=None,
    num_workers: int | None = None,
    **graph_options,
) -> tuple[Candidates, list[dict]]:
    """Score a round's chunks and return its global top-k and per-chunk error statistics.

    Builds the round with `round_graph` and computes it.

    Parameters
    ----------
    store_path, chunk_slices, model_cfg, state_dict, k
        See `round_graph`.
    **graph_options
        `round_graph`'s keyword options: ``chunk_k``, ``split_every``, ``score_dtype``,
        ``batch``, ``device``.
    scheduler
        ``None`` or ``"threads"`` (local threads), ``"sync"``, ``"processes"``, or a
        ``distributed.Client``.
    num_workers
        Dask threads for the local threaded scheduler. Default 1: on the 2-core CPU one
        chunk at a time with all torch threads beat 2 dask threads x 1 torch thread (see
        the module notes); torch threads are set to ``cores // num_workers`` for the
        round and restored after.

    Returns
    -------
    (Candidates, list[dict])
        The selection, ordered by (error desc, index asc), and one statistics dict per
        chunk, in ``chunk_slices`` order (see `score_chunk`).
    """
    graph = round_graph(store_path, chunk_slices, model_cfg, state_dict, k, **graph_options)
    cands, stats = _compute(graph, scheduler, num_workers)
    return cands, sorted(stats, key=lambda s: s["chunk"])


def _compute(graph, scheduler, num_workers):
    """Compute a round's graph on local threads (torch threads shared out), another local
    scheduler, or a ``distributed.Client``."""
    import dask

    if scheduler is not None and not isinstance(scheduler, str):  # a distributed Client
        return scheduler.compute(graph).result()
    if scheduler in (None, "threads"):
        import torch

        workers = 1 if num_workers is None else max(1, int(num_workers))
        before = torch.get_num_threads()
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // workers) if workers > 1 else before)
        try:
            return dask.compute(graph, scheduler="threads", num_workers=workers)[0]
        finally:
            torch.set_num_threads(before)
    return dask.compute(graph, scheduler=scheduler, num_workers=num_workers)[0]


class Draws(NamedTuple):
    """Importance draws of one chunk or of a merge (concatenated in chunk order).

    Attributes
    ----------
    index
        ``(k,)`` int64 global flat indices (with repeats: draws are with replacement).
    target
        ``(k, C)`` float32 normalised targets.
    p_local
        ``(k,)`` float64 probability of each draw within its chunk.
    chunk
        ``(k,)`` int64 position of the draw's chunk in the round's chunk list.
    """

    index: np.ndarray
    target: np.ndarray
    p_local: np.ndarray
    chunk: np.ndarray


def draw_chunks(ms: ModelState, store_path: str, items: Sequence[tuple], *, score_dtype: str | None = None,
                batch: int = 65536, device: str = "cpu", keep: int = 0) -> tuple[Draws, list[dict]]:
    """Score chunks and draw each one's samples by importance (the leaf of `round_draws`).

    ``items`` are ``(slices, n_draws, seed, uniform_share, chunk_id)``. Each sample of a
    chunk is drawn with probability ``(1 - a) e / sum(e) + a / n`` (``e`` its L1 error
    under the snapshot, ``a`` = ``uniform_share``), with replacement, from a NumPy
    generator seeded by ``seed`` (so the draws do not depend on where the task runs, nor
    on how chunks are grouped). With ``a = 1`` the draws are uniform and the chunk is
    only read, not scored. The scored chunks' samples go through one forward, so small
    chunks do not pay a forward call each (a 32² chunk of the tiled bank spends 3x its
    compute in per-call overhead). ``keep``: this process keeps the last ``keep`` chunks
    it read decoded (`_cached_block`).

    Returns
    -------
    (Draws, [stats])
        The draws (``chunk`` = each item's ``chunk_id``) and one error-statistics dict per
        chunk as in `score_chunk` (with ``a = 1`` only ``chunk`` and ``n``: nothing was scored).
    """
    blocks = [_cached_block(store_path, item[0], keep) for item in items]
    scored = [i for i, item in enumerate(items) if item[3] < 1.0]
    preds: dict[int, np.ndarray] = {}
    if scored:
        coords = [blocks[i][1] for i in scored]
        pred = _score_forward(ms, coords[0] if len(coords) == 1 else np.concatenate(coords),
                              score_dtype=score_dtype, batch=batch, device=device)
        preds = dict(zip(scored, np.split(pred, np.cumsum([len(c) for c in coords])[:-1])))
    return _concat_draws([_draw(block[0], block[2], preds.get(i), *item) for i, (block, item)
                          in enumerate(zip(blocks, items))])


def _draw(store, targets: np.ndarray, pred: np.ndarray | None, slices, n_draws: int, seed: int,
          uniform_share: float, chunk_id: int) -> tuple[Draws, list[dict]]:
    """One chunk's draws from its predictions (None: uniform draws, nothing scored)."""
    if pred is None:
        n = targets.shape[0]
        p = np.full(n, 1.0 / n)
        stats = {"chunk": int(chunk_id), "n": int(n)}
        local = np.random.default_rng(int(seed)).integers(0, n, size=int(n_draws))
    else:
        err = chunk_error(pred, targets).astype(np.float64)
        n = err.shape[0]
        total = float(err.sum())
        a = float(uniform_share) if total > 0 else 1.0
        p = (1.0 - a) * err / max(total, 1e-300) + a / n
        stats = {"chunk": int(chunk_id), "n": int(n), "sum": total, "mean": total / n if n else 0.0,
                 "sq_sum": float(np.square(pred - targets, dtype=np.float64).sum())}
        rng = np.random.default_rng(int(seed))
        local = rng.choice(n, size=int(n_draws), replace=True, p=p / p.sum()) if n_draws else np.empty(0, np.int64)
    block_shape = tuple(sl.stop - sl.start for sl in slices)
    glob = tuple(ix + sl.start for ix, sl in zip(np.unravel_index(local, block_shape), slices))
    index = np.ravel_multi_index(glob, store.shape).astype(np.int64) if n_draws else local.astype(np.int64)
    draws = Draws(index, targets[local], p[local], np.full(len(local), chunk_id, np.int64))
    return draws, [stats]


def _concat_draws(parts: list) -> tuple[Draws, list[dict]]:
    """Tree node: concatenate children's draws (in chunk order) and their stats."""
    draws = [p[0] for p in parts]
    merged = Draws(*(np.concatenate([getattr(d, f) for d in draws]) for f in Draws._fields))
    return merged, [s for p in parts for s in p[1]]


def _task_groups(items: list[tuple], samples: int) -> list[list[tuple]]:
    """Consecutive chunks grouped into tasks of at most ``samples`` samples (at least one
    chunk each): chunks of ``samples`` or more stay one task each."""
    groups: list[list[tuple]] = []
    total = 0
    for item in items:
        n = math.prod(sl.stop - sl.start for sl in item[0])
        if groups and total + n <= samples:
            groups[-1].append(item)
            total += n
        else:
            groups.append([item])
            total = n
    return groups


def round_draws(
    store_path: str | os.PathLike,
    chunk_slices: Sequence[tuple[slice, ...]],
    ms: ModelState,
    n_draws: Sequence[int],
    seeds: Sequence[int],
    *,
    uniform_share: float | Sequence[float],
    split_every: int = 8,
    score_dtype=None,
    batch: int = 65536,
    device: str = "cpu",
    keep: int = 0,
    scheduler=None,
    num_workers: int | None = None,
) -> tuple[Draws, list[dict]]:
    """Score a round's chunks, each drawing its own samples by error (`draw_chunks`), and
    merge the draws by a tree of ``split_every``-wide concatenations.

    ``uniform_share`` is one share for every chunk or one per chunk (1 = uniform draws, the
    chunk read but not scored); ``keep`` the decoded chunks each process keeps for the next
    rounds (`_cached_block`). Consecutive chunks of at most ``batch`` samples in all share
    a task and one scoring forward (the draws are the same either way). Only the draws and
    each chunk's error sums leave the tasks. Returns the draws in ``chunk_slices`` order
    and one statistics dict per chunk (``chunk`` = position in ``chunk_slices``).
    """
    from dask.base import tokenize

    slices_list = [_normalise_slices(s) for s in chunk_slices]
    shares = np.broadcast_to(np.asarray(uniform_share, dtype=np.float64), (len(slices_list),)).tolist() \
        if np.ndim(uniform_share) == 0 or len(uniform_share) == len(slices_list) else None
    if not slices_list or len(n_draws) != len(slices_list) or len(seeds) != len(slices_list) or shares is None:
        raise ValueError("round_draws needs one draw count, one seed and one uniform share (or a single share) "
                         "per chunk, and at least one chunk")
    dtype_name = _dtype_name(score_dtype)
    store_path = os.fspath(store_path)
    name = tokenize(ms.token, os.path.abspath(store_path), slices_list, list(n_draws), list(seeds),
                    shares, dtype_name, batch, device)
    items = [(sl, int(k), int(seed), a, i) for i, (sl, k, seed, a) in enumerate(zip(slices_list, n_draws, seeds, shares))]
    leaves = [partial(draw_chunks, store_path=store_path, items=group, score_dtype=dtype_name, batch=batch,
                      device=device, keep=int(keep)) for group in _task_groups(items, batch)]
    graph = _tree(ms, leaves, _concat_draws, split_every, name, "intstream-draw", "intstream-draws")
    draws, stats = _compute(graph, scheduler, num_workers)
    return draws, sorted(stats, key=lambda s: s["chunk"])
