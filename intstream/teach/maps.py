"""Coarse maps of where a teacher sampled (`Teacher.sample_map`), for ``eval --plot``.

Per-sample statistics (in core) and per-chunk statistics (out of core) are reduced onto
one small grid over the signal: at most `MAX_CELLS` cells per axis (256 for images, a
4096-point profile for audio, 32^3 for SDF grids), so the map is a few hundred KB at
most whatever the signal size. Error estimates are averaged per cell (NaN where never
estimated), selection counts are summed.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_CELLS", "cell_factors", "map_shape", "cell_of", "cell_sizes", "reduce_grid", "chunk_grid"]

MAX_CELLS = {1: 4096, 2: 256, 3: 32}


def cell_factors(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Full-resolution samples per map cell along each axis."""
    side = MAX_CELLS.get(len(shape), 32)
    return tuple(max(1, math.ceil(n / side)) for n in shape)


def map_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The map's shape for a signal grid of ``shape``."""
    return tuple(math.ceil(n / f) for n, f in zip(shape, cell_factors(shape)))


def cell_of(flat_index, shape: tuple[int, ...]):
    """Row-major map cell of each row-major flat sample index (NumPy or torch integers)."""
    factors, cells = cell_factors(shape), map_shape(shape)
    out, rest = 0, flat_index
    strides = [math.prod(shape[ax + 1:]) for ax in range(len(shape))]
    for ax in range(len(shape)):
        coord = rest // strides[ax]
        rest = rest - coord * strides[ax]
        out = out * cells[ax] + coord // factors[ax]
    return out


def cell_sizes(shape: tuple[int, ...]) -> np.ndarray:
    """Samples in each map cell (row-major, flat), without materialising the grid."""
    out = np.ones(1, dtype=np.int64)
    for n, f in zip(shape, cell_factors(shape)):
        per = np.full(math.ceil(n / f), f, dtype=np.int64)
        per[-1] = n - f * (len(per) - 1)
        out = np.multiply.outer(out, per).reshape(-1)
    return out


def _reduce_axis(a: np.ndarray, axis: int, f: int) -> np.ndarray:
    if f == 1:
        return a
    return np.add.reduceat(a, np.arange(0, a.shape[axis], f), axis=axis)


def reduce_grid(values: np.ndarray, factors: tuple[int, ...], *, mean: bool) -> np.ndarray:
    """Sum (or NaN-ignoring mean) of a full-grid array over cells of ``factors`` samples."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    s, n = np.where(ok, v, 0.0), ok.astype(np.float64)
    for ax, f in enumerate(factors):
        s, n = _reduce_axis(s, ax, f), _reduce_axis(n, ax, f)
    if not mean:
        return s.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan).astype(np.float32)


def chunk_grid(per_chunk: np.ndarray, sizes: np.ndarray, shape: tuple[int, ...], chunks: tuple[int, ...], *,
               mean: bool) -> np.ndarray:
    """A per-chunk statistic (row-major chunk order, `SignalStore.chunk_slices`) as a map
    on the chunk grid, reduced to at most `MAX_CELLS` per axis (a mean weighted by the
    chunks' sample counts, or a sum)."""
    grid = tuple(math.ceil(n / c) for n, c in zip(shape, chunks))
    v = np.asarray(per_chunk, dtype=np.float64).reshape(grid)
    factors = cell_factors(grid)
    if not mean:
        return reduce_grid(v, factors, mean=False)
    w = np.asarray(sizes, dtype=np.float64).reshape(grid)
    ok = np.isfinite(v)
    num = reduce_grid(np.where(ok, v * w, 0.0), factors, mean=False).astype(np.float64)
    den = reduce_grid(np.where(ok, w, 0.0), factors, mean=False).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1e-300), np.nan).astype(np.float32)
