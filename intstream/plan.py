"""One memory plan for fit, eval and decode (DESIGN §10).

The whole process's peak RSS is estimated as the sum of

``fixed``      the interpreter with torch, numpy, zarr and dask loaded, allocator arenas;
``params``     parameters, gradients and Adam's two moments (16 B per parameter) plus
               the checkpoint's serialisation buffer;
``signal``     in core: coordinates and targets of every sample, the teacher's per-sample
               error estimates and sampling probabilities, the selection, and the
               temporaries of a full-signal scoring (the largest of those phases);
``round``      out of core: a round's draws (the current one and the prefetched next),
               the cached subsets of the paper's mini-batch INT, one chunk group while
               ``full`` streams the signal;
``cache``      out of core, importance rounds: the decoded chunks (coordinates and
               targets) kept for the next rounds, one round's worth;
``train``      activations and their gradients of one training micro-batch;
``score``      activations of one no-grad scoring forward;
``dask``       out of core: each scoring thread's chunk in flight (raw values,
               coordinates, targets, predictions, errors) and its scoring activations;

and `plan_fit` chooses in core or rounds, the training batch (a selection larger than
it trains in micro-batches whose gradients add up to the selection's exactly, see
`intstream.fit.train_step`), the scoring batch and the round size so that the estimate
stays within ``--memory-budget``. When nothing fits, it raises `InputError` before any
work. `plan_predict` does the same for the no-grad forwards of eval and decode.

Every per-sample constant below was measured, not assumed: each probe ran in a fresh
process (torch 2.13 CPU, x86-64 Linux, glibc malloc) and took the growth of
``getrusage(RUSAGE_SELF).ru_maxrss`` over one operation after a warm-up of the same
operation at a tiny size. The constants round the measurements up; the benchmark
``benchmarks/bench_memory.py`` checks the whole estimate against measured peaks.

This module is torch-free (pure arithmetic), so the CLI can plan before importing torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .errors import InputError

__all__ = [
    "MemoryPlan",
    "plan_fit",
    "plan_predict",
    "plan_for_store",
    "format_bytes",
    "FIXED_BYTES",
    "ROUNDS_FIXED_BYTES",
    "train_bytes_per_sample",
    "score_bytes_per_sample",
    "peak_rss_bytes",
]

MiB = 1 << 20

# Fixed overhead. Measured: peak RSS of `intstream fit` on a 64x64 RGB store, 5 steps,
# SIREN 3x32 (parameters negligible) was 327 MiB (python + torch + numpy + zarr + dask
# imports, torch's thread pools and allocator arenas, one checkpoint); `import torch,
# dask, zarr` alone is 233 MiB. Rounded up to leave room for allocator fragmentation.
FIXED_BYTES = 384 * MiB
# Out of core adds dask's threaded scheduler, the prefetch thread and a second model
# copy per process. Measured: a 64x64 store forced into rounds, SIREN 3x32: +40 MiB over
# the in-core run; rounded up.
ROUNDS_FIXED_BYTES = 64 * MiB

# Parameters: weight + grad + Adam exp_avg + exp_avg_sq (4 x 4 B), plus torch.save's
# buffer and the scoring snapshot (model_state) out of core: 2 x 4 B more.
PARAM_BYTES = 24

# The smallest training micro-batch worth planning (fewer samples per forward than this
# and the per-call overhead dominates); in core is chosen only if at least this fits.
MIN_BATCH = 1024
MIN_SCORE_BATCH = 1024
DEFAULT_SCORE_BATCH = 65536
# Out of core, consecutive chunks smaller than this share one scoring task and forward
# (`teach.graph.draw_chunks`): a 1024² mosaic in 32² chunks scored a round in 3.2 s one
# chunk per task, 0.7 s in tasks of 16384 samples (tiled bank, bf16, 2 cores). At 16384
# its fit at --memory-budget 512M peaked at 551 MiB (the fused forward costs more than
# this plan counts); at 4096, 459 MiB (one chunk per task: 444 MiB).
MIN_TASK_SAMPLES = 4096

# The tiled SIREN bank (DESIGN §9) evaluates 1-2^d tiles per sample, pads groups and
# copies each group's tile weights. Measured (probe: one Adam step, grid 2048², batch 32k
# and 128k): 1.14-1.95x the MLP formula for tiles of 64²-256², widths 32-128. Factor 2.
TILED_FACTOR = 2


def train_bytes_per_sample(width: int, depth: int, ndim: int = 3, channels: int = 3) -> int:
    """RSS per sample of one training forward + backward (autograd) of a ``depth`` x ``width`` MLP.

    Measured (probe: one Adam step on a batch of 32k and 128k samples, importance-weighted
    MSE, fresh process): SIREN 6x256 12.4 kB/sample, 3x64 1.6 kB, 4x512 16.5 kB; Fourier
    6x256 9.5 kB. ``8 B x width x hidden layers + 12 B x width`` is 13.3, 1.8, 18.4 kB:
    at or above every measurement. Inputs, targets, weights and outputs of the batch are
    added on top.
    """
    hidden = max(1, depth - 1)
    return 8 * width * hidden + 12 * width + 4 * (ndim + 3 * channels + 1)


def score_bytes_per_sample(width: int, ndim: int = 3, channels: int = 3) -> int:
    """RSS per sample of one no-grad forward (fp32 or bf16 autocast): two layers' activations.

    Measured (probe: `predict` with batch = 32k and 128k, fresh process): SIREN 6x256
    2.07 kB/sample, 3x64 0.52 kB, 4x512 4.13 kB, the same under bf16 autocast:
    ``8 B x width`` plus the batch's coordinates and outputs.
    """
    return 8 * width + 8 * (ndim + channels)


def _incore_signal_bytes(n: int, ndim: int, channels: int, itemsize: int, *, k: int, weighting: str,
                         pool: float) -> dict:
    """Bytes the in-core path holds for an ``n``-sample signal with selections of ``k`` samples.

    Held all run: coordinates ``4 d`` and targets ``4 C`` per sample, the error estimates
    (``4``, when ``pool < 1``), the selection (index 8, weight 4, its coordinates and
    targets, the training outputs handed to the teacher). On top, the largest transient:
    loading (raw values, a float copy, the coordinate mesh), a full-signal scoring
    (outputs, their concatenation, differences) or the importance sampling
    (probabilities and their temporaries, ~6 float arrays over all samples).
    """
    d, c = ndim, channels
    held = n * (4 * d + 4 * c) + (n * 4 if pool < 1 else 0)
    selection = k * (8 + 4 + 4 * d + 4 * c + 2 * 4 * c)
    load = n * (itemsize * c + 4 * c + 8 * d)
    scoring = n * (16 * c + 8)  # outputs + cat (8C), diff/abs (4C), square (4C), errors (8)
    from .teach.topk import MULTINOMIAL_MAX  # torch-free

    # p & temps (+ the float64 CDF of `sample_indices` above torch.multinomial's limit), or top-k
    sampling = n * (24 + (8 if n > MULTINOMIAL_MAX else 0)) + k * 16 if weighting == "importance" else n * 12 + k * 8
    return {"signal": held + max(load, scoring + selection, sampling + selection)}


def _round_bytes(strategy: str, weighting: str, *, n: int, ndim: int, channels: int, chunk_samples: int,
                 n_chunks: int, round_chunks: int, round_samples: int, ratio_max: float) -> dict:
    """Out-of-core terms that depend on the round size (see the module notes)."""
    d, c = ndim, channels
    # A draw: index 8, target 4C, chunk position 8, p_local 8, coords 4d, weight 4, plus
    # the tree merge's concatenation: x2; the current round and the prefetched next: x2;
    # the weights' float64 temporaries and the training outputs handed to observe. By count
    # ~190 B per RGB draw; calibrated to 4 (40 + 8 C + 8 d) = 320 B by bench_memory (16 MP
    # in rounds at 1 GiB, 880 k draws per round, measured 87 MiB above the count).
    per_draw = 4 * (40 + 8 * c + 8 * d)
    terms = {"round": round_samples * per_draw}
    if strategy == "full":
        # One chunk group streamed at a time: blocks and their concatenation, coords + targets.
        terms["round"] = round_chunks * chunk_samples * 2 * (4 * d + 4 * c) + chunk_samples * (4 * d + 4 * c)
    elif strategy == "int" and weighting != "importance":
        # The paper's mini-batch INT caches every mini-batch's top-k subset (index + target).
        n_batches = math.ceil(n_chunks / max(1, round_chunks))
        cached = min(int(ratio_max * n) + n_batches, n_batches * round_samples)
        terms["round"] = round_samples * per_draw + cached * (8 + 4 * c)
    else:  # importance rounds: each process keeps one round's chunks decoded (graph._cached_block)
        terms["cache"] = round_chunks * chunk_samples * (4 * d + 4 * c)
    return terms


def _chunk_work_bytes(chunk_samples: int, ndim: int, channels: int, itemsize: int) -> int:
    """One chunk task in flight: raw values, targets, coords (+ mesh), outputs (+ cat),
    L1 errors (float32 and float64), draw probabilities and their CDF, float64 squared
    errors; ~140 B per RGB sample by count. Calibrated up to ``itemsize C + 40 C + 16 d +
    64`` (219 B) by bench_memory: a 1024² chunk scored in rounds while training measured
    ~90 MiB above the count (a second thread's malloc arena)."""
    d, c = ndim, channels
    return chunk_samples * (itemsize * c + 40 * c + 16 * d + 64)


@dataclass(frozen=True)
class MemoryPlan:
    """What `plan_fit` / `plan_predict` chose and what it estimated.

    Attributes
    ----------
    in_core
        Whether the signal is held in memory (else it trains in rounds over chunks).
    batch
        Samples per training forward/backward (a larger selection is accumulated over
        micro-batches of this size; one optimiser step).
    score_batch
        Samples per no-grad scoring forward.
    round_chunks, round_samples
        Out of core: chunks per round and the most samples a round draws (None in core).
    estimated_bytes
        The estimated peak RSS of the whole process.
    budget
        The ``--memory-budget`` it was planned for.
    terms
        Each estimated term in bytes (see the module notes).
    """

    in_core: bool
    batch: int
    score_batch: int
    round_chunks: int | None
    estimated_bytes: int
    budget: int
    round_samples: int | None = None
    terms: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self, terms: bool = False) -> dict:
        """The manifest's ``plan`` (with each term, for the run's config, when ``terms``)."""
        d = {"in_core": self.in_core, "batch": self.batch, "score_batch": self.score_batch,
             "round_chunks": self.round_chunks, "round_samples": self.round_samples,
             "estimated_bytes": int(self.estimated_bytes), "budget": int(self.budget)}
        if terms:
            d["terms"] = {k: int(v) for k, v in self.terms.items()}
        return d


def format_bytes(n: float) -> str:
    """``1536 MiB`` style (binary units, as --memory-budget reads them)."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.1f}{unit}".replace(".0" + unit, unit)
    return f"{int(n)}B"


def _fits(terms: dict) -> int:
    return int(sum(terms.values()))


def plan_fit(
    budget: int,
    *,
    n_samples: int,
    ndim: int,
    channels: int,
    itemsize: int,
    chunk_samples: int,
    n_chunks: int,
    width: int,
    depth: int,
    params: int,
    strategy: str = "intstream",
    weighting: str = "importance",
    pool: float = 1.0,
    ratio_max: float = 1.0,
    out_of_core: bool = False,
    round_chunks: int | None = None,
    threads: int = 1,
    tiled: bool = False,
) -> MemoryPlan:
    """Choose in core vs rounds, the batches and the round size for a fit within ``budget``.

    Parameters
    ----------
    budget
        ``--memory-budget`` in bytes: the whole process's peak RSS.
    n_samples, ndim, channels, itemsize
        The signal: grid samples, grid axes, channels and stored bytes per value.
    chunk_samples, n_chunks
        Samples per store chunk and the number of chunks.
    width, depth, params
        The model (``params`` counts every parameter, tiled models' included).
    strategy, weighting, pool, ratio_max
        The teacher: its strategy and weighting, the share re-scored per selection, and
        the largest selected fraction its ratio schedule reaches.
    out_of_core
        Force rounds even when the signal would fit.
    round_chunks
        Chunks per round chosen by the user (None = planned).
    threads
        Dask threads scoring chunks at once.
    tiled
        The model is a tiled SIREN bank (``width`` and ``depth`` are each tile's).

    Raises
    ------
    InputError
        When no plan fits the budget (the message gives the smallest estimate).
    """
    d, c = ndim, channels
    n = max(1, int(n_samples))
    chunk_samples = max(1, min(int(chunk_samples), n))
    k_max = max(1, int(math.floor(ratio_max * n + 1e-9))) if strategy != "full" else n
    factor = TILED_FACTOR if tiled else 1
    tps = factor * train_bytes_per_sample(width, depth, d, c)
    sps = factor * score_bytes_per_sample(width, d, c)
    base = {"fixed": FIXED_BYTES, "params": int(params) * PARAM_BYTES}

    # -- in core ---------------------------------------------------------------------
    best_need = None
    if not out_of_core:
        terms = dict(base, **_incore_signal_bytes(n, d, c, itemsize, k=k_max, weighting=weighting, pool=pool))
        left = budget - _fits(terms)
        score_batch = max(MIN_SCORE_BATCH, min(DEFAULT_SCORE_BATCH, n, (left // 4) // sps if left > 0 else 0))
        left -= score_batch * sps
        batch = min(k_max, left // tps) if left > 0 else 0
        need_batch = min(k_max, 8 * MIN_BATCH)  # in core trains in batches of at least this
        if batch >= need_batch:
            terms.update(train=batch * tps, score=score_batch * sps)
            return MemoryPlan(True, int(batch), int(score_batch), None, _fits(terms), budget, None, terms)
        terms.update(train=need_batch * tps, score=score_batch * sps)
        best_need = _fits(terms)

    # -- rounds ----------------------------------------------------------------------
    base = dict(base, fixed=FIXED_BYTES + ROUNDS_FIXED_BYTES)
    # A scoring task covers one chunk, or consecutive small chunks up to MIN_TASK_SAMPLES.
    task_samples = min(n, max(chunk_samples, MIN_TASK_SAMPLES))
    work = _chunk_work_bytes(task_samples, d, c, itemsize)
    left = budget - _fits(base) - threads * work
    score_batch = max(MIN_SCORE_BATCH, min(DEFAULT_SCORE_BATCH, task_samples,
                                           (left // (4 * threads)) // sps if left > 0 else 0))
    dask = threads * (work + score_batch * sps)
    left = budget - _fits(base) - dask
    # Half of what is left trains, half holds the round (draws, cached subsets, chunk groups).
    batch = max(MIN_BATCH, min(k_max, (left // 2) // tps if left > 0 else 0))
    share = left - batch * tps
    part_per_chunk = chunk_samples * 2 * (4 * d + 4 * c)
    g = round_chunks or max(1, min(n_chunks, share // 2 // max(1, part_per_chunk) if share > 0 else 1))
    g = max(1, min(int(g), n_chunks))
    # Samples a round draws: what the draws' share holds, at least one micro-batch.
    probe = _round_bytes(strategy, weighting, n=n, ndim=d, channels=c, chunk_samples=chunk_samples,
                         n_chunks=n_chunks, round_chunks=g, round_samples=1 << 20, ratio_max=ratio_max)
    per_sample = max(1, probe["round"] / (1 << 20))
    draw_share = share - probe.get("cache", 0)  # what the chunk cache leaves to the draws
    round_samples = int(max(MIN_BATCH, min(k_max, draw_share // per_sample if draw_share > 0 else 0)))
    if strategy == "full":
        round_samples = n
    batch = min(batch, max(MIN_BATCH, round_samples if strategy != "full" else g * chunk_samples))
    terms = dict(base, dask=dask, train=batch * tps, score=0, **_round_bytes(
        strategy, weighting, n=n, ndim=d, channels=c, chunk_samples=chunk_samples, n_chunks=n_chunks,
        round_chunks=g, round_samples=round_samples, ratio_max=ratio_max))
    est = _fits(terms)
    if est <= budget:
        return MemoryPlan(False, int(batch), int(score_batch), g, est, budget, round_samples, terms)
    need = min(est, best_need) if best_need is not None else est
    raise InputError(None, f"--memory-budget {format_bytes(budget)}: no plan fits: needs at least "
                           f"{format_bytes(need)} (estimate {format_bytes(est)} out of core: "
                           + ", ".join(f"{k} {format_bytes(v)}" for k, v in terms.items() if v) + ")")


def plan_predict(budget: int, *, width: int, params: int = 0, ndim: int = 3, channels: int = 3,
                 block_samples: int = 0, batch: int | None = None, tiled: bool = False) -> MemoryPlan:
    """The scoring batch of eval and decode within ``budget``.

    ``block_samples`` is the largest block streamed at once (its coordinates, values,
    predictions and the metrics' accumulators are held); ``batch`` a user's request,
    capped to what fits.
    """
    d, c = ndim, channels
    sps = (TILED_FACTOR if tiled else 1) * score_bytes_per_sample(width, d, c)
    terms = {"fixed": FIXED_BYTES, "params": int(params) * 8,
             "blocks": int(block_samples) * (2 * (4 * d + 12 * c) + 16)}
    left = budget - _fits(terms)
    fit_batch = left // sps if left > 0 else 0
    want = DEFAULT_SCORE_BATCH if batch is None else int(batch)
    score_batch = max(MIN_SCORE_BATCH, min(want, fit_batch))
    terms["score"] = score_batch * sps
    est = _fits(terms)
    if est > budget:
        raise InputError(None, f"--memory-budget {format_bytes(budget)}: no plan fits: needs at least "
                               f"{format_bytes(est)} (" + ", ".join(f"{k} {format_bytes(v)}" for k, v in terms.items() if v) + ")")
    return MemoryPlan(True, 0, int(score_batch), None, est, budget, None, terms)


def plan_for_store(budget: int, store, *, model_cfg, params: int, teacher_cfg, total_steps: int,
                   out_of_core: bool = False, round_chunks: int | None = None, threads: int = 1) -> MemoryPlan:
    """`plan_fit` for a `SignalStore`, a `ModelConfig` and a `TeacherConfig`."""
    import numpy as np

    from .teach.schedules import ratio_max

    return plan_fit(
        budget, n_samples=store.n_samples, ndim=store.ndim, channels=store.channels,
        itemsize=np.dtype(store.meta["dtype"]).itemsize, chunk_samples=math.prod(store.chunks),
        n_chunks=len(store.chunk_slices()), width=model_cfg.width, depth=model_cfg.depth, params=params,
        strategy=teacher_cfg.strategy, weighting=teacher_cfg.weighting, pool=teacher_cfg.pool,
        ratio_max=1.0 if teacher_cfg.strategy == "full" else ratio_max(teacher_cfg.ratio_schedule, total_steps, teacher_cfg.ratio),
        out_of_core=out_of_core,
        round_chunks=round_chunks, threads=threads, tiled=getattr(model_cfg, "model", "single") == "tiled")


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (bytes; ru_maxrss is KiB on Linux)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


DEFAULT_BUDGET = 2 << 30  # fit's --memory-budget default; eval and decode plan within it too


def predict_batch(model_config: dict, state: dict, batch: int | None = None, budget: int = DEFAULT_BUDGET) -> int:
    """eval's and decode's forward batch: ``batch`` (or the default) capped to what fits ``budget``.

    ``state`` is the network's state dict (tensors or arrays), for its parameter count.
    """
    width = int(model_config.get("width", 256))
    params = sum(math.prod(getattr(t, "shape", ())) for t in state.values())
    return plan_predict(budget, width=width, params=params, ndim=int(model_config.get("in_dim", 3)),
                        channels=int(model_config.get("out_dim", 3)), batch=batch,
                        tiled=model_config.get("model", "single") == "tiled").score_batch
