"""Pure per-chunk kernels of INT's selection: error scores and top-k (STYLE item 7).

NumPy in, NumPy out, no Dask: `chunkgraph` wires these into a graph, and the in-core loop
uses `topk_indices` on torch tensors.

Every top-k here orders samples by **error descending, then global index ascending**, so
the selection never depends on how the signal was cut into chunks or on the order chunks
are merged in: the result always equals ``np.argsort(-error, kind="stable")[:k]`` over the
whole signal (indices being positions in the flat signal). NaN errors sort after every
number (NumPy's convention), i.e. they are never preferred.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

__all__ = ["Candidates", "chunk_error", "chunk_topk", "combine_topk", "topk_indices", "sample_indices"]

# torch.multinomial refuses more categories than this ("cannot exceed 2^24").
MULTINOMIAL_MAX = 1 << 24


class Candidates(NamedTuple):
    """Top-k candidates of a chunk or of a merge, ordered by (error desc, index asc).

    Attributes
    ----------
    index
        ``(k,)`` int64 row-major flat indices of the samples in the whole grid.
    target
        ``(k, C)`` float32 normalised targets of those samples.
    error
        ``(k,)`` float32 error scores.
    """

    index: np.ndarray
    target: np.ndarray
    error: np.ndarray

    @classmethod
    def empty(cls, channels: int) -> "Candidates":
        return cls(np.empty(0, np.int64), np.empty((0, channels), np.float32), np.empty(0, np.float32))

    @property
    def size(self) -> int:
        """Number of candidates (``len()`` is the tuple's 3, as for any NamedTuple)."""
        return int(self.index.shape[0])


def chunk_error(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The paper's score: per sample, ``sum_c |pred - target|`` (L1 over channels).

    Parameters
    ----------
    pred, target
        ``(n, C)`` arrays (``(n,)`` is taken as one channel).

    Returns
    -------
    np.ndarray
        ``(n,)`` float32.
    """
    pred = np.asarray(pred, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    if pred.shape != target.shape:
        raise ValueError(f"pred {pred.shape} and target {target.shape} differ in shape")
    d = np.subtract(pred, target)
    np.abs(d, out=d)
    return d.reshape(d.shape[0], -1).sum(axis=1, dtype=np.float32)


def _select(index: np.ndarray, error: np.ndarray, k: int) -> np.ndarray:
    """Positions of the top-k (error desc, index asc), in that order."""
    n = error.shape[0]
    neg = np.negative(error)  # ascending neg == descending error; NaN stays last either way
    if k < n:
        # O(n) threshold, then resolve the threshold's ties by index (argpartition alone
        # picks an arbitrary subset of tied values, which would depend on chunking).
        kth = np.partition(neg, k - 1)[k - 1]
        if np.isnan(kth):
            strict = np.flatnonzero(~np.isnan(neg))
            ties = np.flatnonzero(np.isnan(neg))
        else:
            strict = np.flatnonzero(neg < kth)
            ties = np.flatnonzero(neg == kth)
        need = k - strict.shape[0]
        if ties.shape[0] > need:
            ties = ties[np.argsort(index[ties], kind="stable")[:need]]
        sel = np.concatenate([strict, ties])
    else:
        sel = np.arange(n)
    order = np.lexsort((index[sel], neg[sel]))
    return sel[order]


def chunk_topk(index: np.ndarray, target: np.ndarray, error: np.ndarray, k: int) -> Candidates:
    """The ``k`` largest errors of one chunk (all of them if ``k >= n``).

    Parameters
    ----------
    index
        ``(n,)`` global flat indices of the chunk's samples (unique).
    target
        ``(n, C)`` targets, carried along so training needs no second read.
    error
        ``(n,)`` scores (`chunk_error`).
    k
        How many to keep (``k >= 0``).

    Returns
    -------
    Candidates
        ``min(k, n)`` samples ordered by (error desc, index asc).
    """
    index = np.asarray(index, dtype=np.int64)
    error = np.asarray(error, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    if target.ndim == 1:
        target = target[:, None]
    n = error.shape[0]
    if index.shape != (n,) or target.shape[0] != n:
        raise ValueError(f"index {index.shape}, target {target.shape} and error {error.shape} disagree")
    if k < 0:
        raise ValueError(f"k must be >= 0 (got {k})")
    if k == 0 or n == 0:
        return Candidates.empty(target.shape[1])
    sel = _select(index, error, int(k))
    return Candidates(index[sel], target[sel], error[sel])


def combine_topk(cands: Sequence[Candidates], k: int) -> Candidates:
    """Merge candidate sets (disjoint index sets) and keep the top ``k`` with the same order.

    Exact: the top-k of a union is within the union of each part's top-k, so a tree of
    `combine_topk` over per-chunk `chunk_topk` results equals the global top-k.
    """
    cands = list(cands)
    if not cands:
        raise ValueError("combine_topk needs at least one Candidates")
    if len(cands) == 1 and cands[0].size <= k:
        return cands[0]  # already ordered and within k
    index = np.concatenate([c.index for c in cands])
    target = np.concatenate([c.target for c in cands])
    error = np.concatenate([c.error for c in cands])
    return chunk_topk(index, target, error, k)


def topk_indices(error, k: int):
    """Torch top-k for the in-core loop, with the same (error desc, index asc) order.

    ``torch.topk`` makes no promise about which of several tied values it returns, nor in
    what order; this function uses it only to find the k-th value, then takes everything
    strictly above it plus the lowest-index ties, so the result equals
    ``np.argsort(-error, kind="stable")[:k]`` exactly. NaN errors are ranked last.

    Parameters
    ----------
    error
        ``(n,)`` float tensor (any device).
    k
        How many (clipped to ``n``).

    Returns
    -------
    torch.LongTensor
        ``(min(k, n),)`` positions into ``error``, ordered by (error desc, index asc).
    """
    import torch

    if error.ndim != 1:
        raise ValueError(f"error must be 1-D (got shape {tuple(error.shape)})")
    n = error.shape[0]
    k = max(0, min(int(k), n))
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=error.device)
    # -inf for NaN only for the threshold search; NaN keeps its own "last" rank below.
    nan = torch.isnan(error)
    has_nan = bool(nan.any())
    err = torch.where(nan, torch.full_like(error, -float("inf")), error) if has_nan else error
    if k < n:
        kth = torch.topk(err, k, largest=True, sorted=False).values.min()
        above = err > kth
        if has_nan:
            above &= ~nan
        tie_mask = (err == kth) & ~nan if has_nan else err == kth
        ties = torch.nonzero(tie_mask).squeeze(1)  # nonzero is index-ascending
        need = k - int(above.sum())
        if need > ties.shape[0]:  # only NaNs left to fill with, lowest index first
            ties = torch.cat([ties, torch.nonzero(nan).squeeze(1)])
        above[ties[:need]] = True
        sel = torch.nonzero(above).squeeze(1)  # index-ascending, exactly k
    else:
        sel = torch.arange(n, device=error.device)
    # Stable sort on an index-ascending selection: ties stay index-ascending.
    key = err[sel]
    order = torch.sort(key, descending=True, stable=True).indices
    # (NaN became -inf in err, so NaNs sort last; errors are >= 0, so no real -inf competes.)
    return sel[order]


def sample_indices(p, k: int, generator):
    """``k`` indices drawn with replacement, index ``i`` with probability ``p[i]`` (a 1-D
    torch tensor of non-negative weights; they need not sum to 1).

    ``torch.multinomial`` up to `MULTINOMIAL_MAX` categories (bit-for-bit the draws of
    earlier versions); above its limit (a 4097 x 4097 image, an hour of audio in core)
    inverse-CDF sampling from the same distribution: a float64 cumulative sum, uniforms
    from ``generator``, ``searchsorted``. Zero-weight indices are never drawn either way.
    """
    import torch

    n = p.numel()
    if n <= MULTINOMIAL_MAX:
        return torch.multinomial(p, k, replacement=True, generator=generator)
    cdf = torch.cumsum(p, 0, dtype=torch.float64)
    u = torch.rand(k, dtype=torch.float64, generator=generator).mul_(cdf[-1])
    return torch.searchsorted(cdf, u, right=True).clamp_max_(n - 1)
