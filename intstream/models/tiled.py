"""The tiled SIREN bank (DESIGN §9): capacity that grows with the signal.

The grid is cut into tiles; each tile owns a small SIREN over *local* coordinates in
[-1, 1] (the tile plus its overlap margin). The module takes the same *global*
coordinates as `Siren` (``(n, d)``, ``linspace(-extent, extent, n)`` per axis), so
teachers, `predict`, eval, decode, export and the chunk tasks use it unchanged.

Forward, with no Python loop over tiles:

1. global coordinate -> continuous sample position ``q`` per axis (cell ``i`` spans
   ``[i, i + 1)``); tile ``j`` of an axis owns ``[j L, (j + 1) L)`` with ``L = n / k``
   (balanced tiles; ``L`` is the tile edge when it divides the grid, as the defaults
   do for the store's chunks);
2. per axis, the 1 or 2 tiles covering ``q`` and their partition-of-unity weights: a
   smoothstep ramp across the ``2 m`` band around each tile border (``m`` = overlap
   margin in samples), so the blend ``sum_t w_t(x) f_t(x)`` is C1 and the weights sum
   to 1 exactly; interior samples touch one tile, border bands 2, corners 2^d;
3. the (sample, tile) pairs are sorted by tile and packed into groups of at most ``G``
   pairs (a large tile spans several groups; ``G`` is chosen per batch so padding
   stays under a quarter of the work);
4. one ``torch.baddbmm`` per layer over the groups, each group with its tile's weights
   (``index_select`` on the ``[n_tiles, in, out]`` tensors);
5. ``index_add`` of ``w * f`` back onto the samples.

Parameters: ``layers.{i}.weight`` is ``[n_tiles, in, out]`` (the layout `export`
quantises per (tile, output unit) over ``in``, i.e. per tile and output row) and
``layers.{i}.bias`` is flat ``[n_tiles * out]`` (row-major ``[n_tiles, out]``), so the
weights file keeps biases in float16 like every 1-D tensor.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .mlp import _autocast_on, siren_init_

__all__ = ["TiledSiren", "tile_counts"]

# Group sizes tried per batch (powers of two); the largest whose padding stays under
# PAD_LIMIT of the pairs wins (bigger groups = fewer, larger GEMMs).
_GROUP_SIZES = tuple(1 << k for k in range(12, 2, -1))  # 4096 ... 8
PAD_LIMIT = 0.25


def tile_counts(grid: tuple[int, ...], tile: tuple[int, ...]) -> tuple[int, ...]:
    """Tiles per axis: ``ceil(n / t)`` (so tiles are at most ``t`` samples, balanced)."""
    return tuple(max(1, math.ceil(n / max(1, min(t, n)))) for n, t in zip(grid, tile))


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class _TileLinear(nn.Module):
    """One layer of every tile: ``weight [n_tiles, in, out]``, ``bias [n_tiles * out]``."""

    def __init__(self, n_tiles: int, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(n_tiles, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_tiles * out_features))

    def tile_bias(self) -> torch.Tensor:
        return self.bias.view(-1, self.out_features)

    def extra_repr(self) -> str:
        return f"tiles={self.weight.shape[0]}, in={self.in_features}, out={self.out_features}"


class TiledSiren(nn.Module):
    """A bank of small SIRENs, one per tile, blended by a partition of unity.

    Parameters
    ----------
    in_dim, out_dim
        Grid axes (1 audio, 2 image, 3 SDF) and output channels.
    grid
        The signal's grid shape (samples per axis) the tiles cut.
    extent
        Per axis, global coordinates span ``[-extent, extent]`` (`Normalisation.extent`).
    tile
        Maximum samples per tile per axis (balanced: ``k = ceil(n / t)`` tiles of ``n / k``).
    overlap
        Margin ``m`` in samples on each side of a tile border over which neighbours blend
        (clipped to half a tile); 0 = disjoint tiles (seams).
    width, depth, omega0, first_omega0
        Each tile's SIREN, as in `Siren` (``depth`` linear layers, the last one linear).
    """

    def __init__(self, in_dim: int, out_dim: int, *, grid, extent, tile, overlap: float = 2.0, width: int = 32,
                 depth: int = 4, omega0: float = 30.0, first_omega0: float | None = None):
        super().__init__()
        grid, extent, tile = tuple(int(n) for n in grid), tuple(float(e) for e in extent), tuple(int(t) for t in tile)
        if not (len(grid) == len(extent) == len(tile) == in_dim):
            raise ValueError(f"grid {grid}, extent {extent} and tile {tile} must each have {in_dim} axes")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.grid, self.extent, self.tile = grid, extent, tile
        self.counts = tile_counts(grid, tile)
        self.lengths = tuple(n / k for n, k in zip(grid, self.counts))
        self.margins = tuple(0.0 if k == 1 else min(float(overlap), L / 2) for k, L in zip(self.counts, self.lengths))
        self.n_tiles = math.prod(self.counts)
        self.omega0 = float(omega0)
        self.first_omega0 = float(omega0 if first_omega0 is None else first_omega0)
        dims = [in_dim] + [width] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(_TileLinear(self.n_tiles, a, b) for a, b in zip(dims[:-1], dims[1:]))
        # Row-major strides of the tile grid, and per-axis constants of the coordinate maps.
        strides = [1] * in_dim
        for a in range(in_dim - 2, -1, -1):
            strides[a] = strides[a + 1] * self.counts[a + 1]
        self.strides = tuple(strides)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SIREN initialisation in every tile (weights and biases, as `Siren`)."""
        siren_init_(self.layers, self.omega0)

    # -- routing ---------------------------------------------------------------------
    def _axis_constants(self, x: torch.Tensor):
        """Per-axis tensors (1, d): position map scale/offset, tile length, margin, last tile."""
        c = getattr(self, "_consts", None)
        if c is None or c[0].device != x.device:
            scale = [(n - 1) / 2.0 / e for n, e in zip(self.grid, self.extent)]
            offset = [(n - 1) / 2.0 + 0.5 for n in self.grid]
            c = tuple(torch.tensor(v, dtype=torch.float32, device=x.device)[None]
                      for v in (scale, offset, self.lengths, self.margins, [k - 1 for k in self.counts],
                                [2.0 / (L + 2 * m) for L, m in zip(self.lengths, self.margins)],
                                [0.5 / m if m > 0 else 0.0 for m in self.margins]))
            c = c + (torch.tensor(self.strides, dtype=torch.long, device=x.device),)
            self._consts = c
        return c

    def positions(self, x: torch.Tensor) -> torch.Tensor:
        """Global coordinates ``(n, d)`` -> continuous sample positions ``q`` (cell i = [i, i+1))."""
        scale, offset = self._axis_constants(x)[:2]
        return torch.addcmul(offset, x, scale)

    def route(self, x: torch.Tensor):
        """The (sample, tile) pairs of ``x``: ``(sample, tile, weight, local coords)``.

        Every sample's weights sum to 1 (zero-weight pairs are dropped). The first ``n``
        pairs are each sample's own tile (the one whose cell holds it); pairs with
        neighbours follow, only for the samples in border bands.
        """
        n, d = x.shape
        scale, offset, L, m, kmax, to_local, inv2m, strides = self._axis_constants(x)
        q = torch.addcmul(offset, x, scale)
        j0 = torch.minimum(torch.floor(q / L).clamp_(min=0), kmax)
        dl = q - j0 * L  # distance to the own tile's left border, in samples
        local0 = (dl + m) * to_local - 1.0
        tile0 = (j0.long() * strides).sum(1)
        sample0 = torch.arange(n, device=x.device)
        if not any(mm > 0 for mm in self.margins):
            return sample0, tile0, torch.ones(n, dtype=x.dtype, device=x.device), local0
        left = (dl < m) & (j0 > 0)
        right = (dl > L - m) & (j0 < kmax)
        w_left = 1.0 - _smoothstep((dl + m) * inv2m)  # weight of tile j0 - 1
        w_right = _smoothstep((dl - L + m) * inv2m)  # weight of tile j0 + 1
        w_nb = torch.where(left, w_left, torch.where(right, w_right, torch.zeros_like(dl)))
        w_own = 1.0 - w_nb
        weight0 = w_own.prod(1)
        band = (left | right).any(1).nonzero(as_tuple=True)[0]
        if band.numel() == 0:
            return sample0, tile0, weight0, local0
        # Band samples: every other combination of (own, neighbour) tile per axis.
        j0b, dlb, wnb, wob = j0[band], dl[band], w_nb[band], w_own[band]
        step = (right.to(j0.dtype) - left.to(j0.dtype))[band]  # +1 / -1 / 0 per axis
        combos = torch.cartesian_prod(*[torch.tensor([False, True], device=x.device)] * d).reshape(-1, d)[1:]
        bits = combos[None]  # (1, 2^d - 1, d)
        Wc = torch.where(bits, wnb[:, None], wob[:, None]).prod(2)  # (nb, 2^d - 1)
        keep = Wc > 0
        bi, ci = keep.nonzero(as_tuple=True)
        sel_bits = combos[ci]  # (P1, d)
        jn = j0b[bi] + step[bi] * sel_bits
        local1 = (dlb[bi] - (jn - j0b[bi]) * L + m) * to_local - 1.0
        tile1 = (jn.long() * strides).sum(1)
        sample = torch.cat([sample0, band[bi]])
        tile = torch.cat([tile0, tile1])
        weight = torch.cat([weight0, Wc[bi, ci]])
        local = torch.cat([local0, local1])
        return sample, tile, weight, local

    def _groups(self, tile: torch.Tensor):
        """Sort pairs by tile and pack them: (order, flat slot per sorted pair, tile per group, G)."""
        tile_sorted, order = torch.sort(tile, stable=True)
        counts = torch.bincount(tile_sorted, minlength=self.n_tiles)
        P = int(tile.numel())
        c = counts[counts > 0]
        G = _GROUP_SIZES[-1]
        for g in _GROUP_SIZES:
            if int(((c + g - 1) // g).sum()) * g <= (1 + PAD_LIMIT) * P:
                G = g
                break
        per_tile = (counts + G - 1) // G  # groups per tile
        group_start = torch.cumsum(per_tile, 0) - per_tile
        tile_start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(P, device=tile.device) - tile_start[tile_sorted]
        slot = (group_start[tile_sorted] + rank // G) * G + rank % G
        group_tile = torch.repeat_interleave(torch.arange(self.n_tiles, device=tile.device), per_tile)
        return order, slot, group_tile, G

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, in_dim)`` global coordinates -> ``(n, out_dim)`` blended outputs."""
        n = x.shape[0]
        if n == 0:
            return x.new_zeros(0, self.out_dim)
        sample, tile, weight, local = self.route(x)
        order, slot, group_tile, G = self._groups(tile)
        n_groups = int(group_tile.numel())
        h = local.new_zeros(n_groups * G, self.in_dim).index_copy_(0, slot, local.index_select(0, order))
        h = h.view(n_groups, G, self.in_dim)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            Wt = layer.weight.index_select(0, group_tile)  # (g, in, out)
            b = layer.tile_bias().index_select(0, group_tile).unsqueeze(1)  # (g, 1, out)
            if i == last:
                h = torch.baddbmm(b, h, Wt)
                break
            # omega0 scales the (small) per-group weights and biases, not the large
            # pre-activation: baddbmm's alpha/beta would cost two passes over the
            # activations' gradient per layer in backward (~15% of a training step).
            w0 = self.first_omega0 if i == 0 else self.omega0
            if i == 0 and _autocast_on(h.device.type):
                # As in `Siren`: bf16 would cost ~0.1 rad on the first phases; K = in_dim is free in fp32.
                with torch.autocast(h.device.type, enabled=False):
                    h = torch.baddbmm(b.float() * w0, h.float(), Wt.float() * w0)
            else:
                h = torch.baddbmm(b * w0, h, Wt * w0)
            h = torch.sin(h) if torch.is_grad_enabled() and h.requires_grad else h.sin_()
        f = h.reshape(n_groups * G, self.out_dim).index_select(0, slot)  # sorted pair order
        contrib = f * weight.index_select(0, order)[:, None]
        return x.new_zeros(n, self.out_dim, dtype=contrib.dtype).index_add_(0, sample.index_select(0, order), contrib)

    def extra_repr(self) -> str:
        return (f"grid={self.grid}, tiles={self.counts}, tile_len={tuple(round(L, 3) for L in self.lengths)}, "
                f"margins={self.margins}, omega0={self.omega0}, first_omega0={self.first_omega0}")

    def tile_forward(self, t: int, local: torch.Tensor) -> torch.Tensor:
        """Tile ``t``'s SIREN on local coordinates (reference path, one tile at a time)."""
        h = local
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            W, b = layer.weight[t], layer.tile_bias()[t]
            if i == last:
                return torch.addmm(b, h, W)
            w0 = self.first_omega0 if i == 0 else self.omega0
            h = torch.sin(w0 * torch.addmm(b, h, W))
        raise AssertionError("unreachable")
