"""Pure geometry kernels for signed-distance grids: point-triangle distance, winding number.

These take arrays and return arrays (numpy, float32). `sdf_block` computes the signed
distance of a rectangular block of grid voxels, with exact distances and a
generalised-winding-number sign; `intstream.readers.sdf` wires it to the reader interface.

How `sdf_block` stays fast without a BVH
----------------------------------------
Distances: a hierarchy of cubic cells, starting from a global grid of ``TILE``³ cells
and halving down to single voxels. A cell with centre ``c`` and half-diagonal ``r`` keeps
as candidates the triangles ``t`` with ``dist(c, t) <= d(c) + 2 r``, ``d(c)`` being the
exact distance of ``c`` to the surface: any point ``q`` of the cell has
``d(q) <= d(c) + r`` and its nearest triangle lies within ``d(q)`` of ``q``, so the
candidates always contain it. Every voxel's distance is the minimum over its candidates:
exact everywhere, near the surface and far from it.

What makes it cheap is testing that rule on bounds before evaluating a triangle for a
child cell: each evaluated pair leaves the direction ``u`` from its closest point ``x``,
and since the triangle is convex and lies behind the plane through ``x`` normal to
``u``, ``dist(q, t) >= dist(c, t) + (q - c) . u`` for every point ``q``. Far from the
surface this bound is nearly tight, so a voxel evaluates about 3 triangles instead of
the tens that sit in a shell one voxel thick.

Sign: the generalised winding number ``w`` (Jacobson et al. 2013; inside iff
``w >= 0.5``), robust for open scans where ray parity is not. ``w`` costs one solid
angle per triangle, so it is evaluated at cell centres: a cell of at least
``GWN_MIN_CELL`` voxels per side whose centre is farther than ``GWN_MARGIN * r`` from the
surface holds no surface, so its voxels take the sign of ``w(c)`` (for a closed mesh ``w``
is constant there; for an open one it varies slowly away from the surface, and a cell
whose ``w(c)`` is close to 0.5 -- near a hole -- is split further). Voxels left near the
surface take the sign of the nearest triangle's side (``n . (p - x)``, the face with the
largest ``|cos|`` among equally near ones, which is the pseudo-normal sign on an edge);
where the nearest point lies on the mesh's boundary (a hole's rim), that side means
nothing and the voxel's exact winding number decides.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import os
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TILE",
    "MeshData",
    "prepare_mesh",
    "grid_axis",
    "point_triangle_distance",
    "winding_number",
    "sdf_block",
]

# Edge of the global cell grid the hierarchy starts from; bounds the memory per tile.
TILE = 32
# Smallest cell whose centre gets a winding number (smaller ones use the face sign).
GWN_MIN_CELL = 4
# A cell is off the surface when d(c) > GWN_MARGIN * r (1 would be the bare minimum).
GWN_MARGIN = 1.5
# |w - 0.5| below this counts as ambiguous (near a hole): split the cell further.
GWN_AMBIGUOUS = 0.1
# Point-triangle pairs per exact-distance call: small enough to stay in cache.
PAIR_CHUNK = 1 << 14
# Point x triangle pairs per winding-number chunk.
GWN_CHUNK = 1 << 17
# Float32 slack when comparing distances (box units; a voxel is >= 1/1023).
_EPS = 1e-6
# Absolute error allowed for a closest-point offset (float32 coordinates of size <= 1):
# the direction u = offset / dist is trusted to TOL / dist.
_DIR_TOL = 1e-5

# Rows of MeshData.cols.
_A, _AB, _AC, _AA, _BB, _CC, _INV, _N = 0, 3, 6, 9, 10, 11, 12, 13
_EXACT_ROWS = 13  # a, ab, ac, |ab|^2, ab.ac, |ac|^2, 1/Gram


@dataclass(frozen=True)
class MeshData:
    """Triangles of a normalised mesh laid out for the kernels.

    Attributes
    ----------
    cols
        ``(16, F)`` float32, one row per component: vertex ``a`` (3), edges ``ab`` and
        ``ac`` (3 + 3), ``|ab|^2``, ``ab . ac``, ``|ac|^2``, the inverse Gram determinant,
        and the unit normal (3). Rows are contiguous so that gathers stream.
    verts
        ``(3, 3, F)`` float32: ``[vertex][axis]`` of every triangle (solid angles).
    rim_edges
        ``(F, 3)`` bool: edges ``ab``, ``bc``, ``ca`` that no other face shares (the
        rims of holes).
    """

    cols: np.ndarray
    verts: np.ndarray
    rim_edges: np.ndarray

    @property
    def boundary(self) -> np.ndarray:
        """``(F,)`` bool: the triangle has an edge on a rim."""
        return self.rim_edges.any(axis=1)

    @property
    def n_faces(self) -> int:
        return int(self.cols.shape[1])


def prepare_mesh(vertices: np.ndarray, faces: np.ndarray) -> MeshData:
    """Lay out a normalised triangle mesh for the kernels.

    Parameters
    ----------
    vertices
        ``(V, 3)`` vertex positions (already in the [-0.5, 0.5] box).
    faces
        ``(F, 3)`` vertex indices, consistently oriented with outward normals. Faces of
        zero area are dropped (they add no surface, and their Gram determinant is 0).
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    ab, ac = b - a, c - a
    n = np.cross(ab, ac)
    area2 = np.linalg.norm(n, axis=1)
    good = area2 > 1e-12 * max(float(area2.max(initial=0.0)), 1e-300)
    f, a, b, c, ab, ac, n, area2 = (x[good] for x in (f, a, b, c, ab, ac, n, area2))
    aa = (ab * ab).sum(1)
    bb = (ab * ac).sum(1)
    cc = (ac * ac).sum(1)
    gram = aa * cc - bb * bb  # = |ab x ac|^2 > 0 for the faces kept
    cols = np.concatenate([a.T, ab.T, ac.T, aa[None], bb[None], cc[None], 1.0 / gram[None], (n / area2[:, None]).T])
    # Boundary edges (rims of holes) are used by exactly one face.
    edges = np.sort(np.stack([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=1).reshape(-1, 2), axis=1)
    _, inverse, counts = np.unique(edges, axis=0, return_inverse=True, return_counts=True)
    rim_edges = (counts[inverse.reshape(-1)] == 1).reshape(-1, 3)
    verts = np.stack([a.T, b.T, c.T])
    return MeshData(
        np.ascontiguousarray(cols, dtype=np.float32),
        np.ascontiguousarray(verts, dtype=np.float32),
        rim_edges,
    )


def grid_axis(n: int, start: int, stop: int) -> np.ndarray:
    """World coordinates of voxels ``start..stop-1`` on an axis of ``n``: ``linspace(-0.5, 0.5, n)``.

    Computed from the index as `intstream.normalize.axis_coords` does (times 0.5), so a
    voxel's value is the distance at the coordinate the network sees.
    """
    i = np.arange(start, stop, dtype=np.float64)
    return (-0.5 + i / (n - 1)) if n > 1 else np.zeros_like(i)


def _closest(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Offsets ``p - x`` to the closest points of triangles, pairwise (float32, one chunk).

    ``p`` is ``(3, n)``; ``g`` the gathered rows ``[:_EXACT_ROWS]`` of `MeshData.cols`.
    The regions follow Ericson (Real-Time Collision Detection, 5.1.5); they are applied in
    the reverse of his early-exit order, so that his first match wins. Written as in-place
    numpy passes: this kernel is where the time goes.
    """
    ab, ac = g[_AB : _AB + 3], g[_AC : _AC + 3]
    ap = p - g[_A : _A + 3]
    d1 = ab[0] * ap[0]
    d1 += ab[1] * ap[1]
    d1 += ab[2] * ap[2]
    d2 = ac[0] * ap[0]
    d2 += ac[1] * ap[1]
    d2 += ac[2] * ap[2]
    d3 = d1 - g[_AA]
    d4 = d2 - g[_BB]
    d5 = d1 - g[_BB]
    d6 = d2 - g[_CC]
    va = d3 * d6
    va -= d5 * d4
    vb = d5 * d2
    vb -= d1 * d6
    vc = d1 * d4
    vc -= d3 * d2
    # Inside the face: barycentrics over the Gram determinant (= va + vb + vc).
    v = vb * g[_INV]
    w = vc * g[_INV]
    e, f = d4 - d3, d5 - d6
    with np.errstate(divide="ignore", invalid="ignore"):  # only masked-in quotients are used
        m = (va <= 0) & (e >= 0) & (f >= 0)  # edge bc
        t = e / (e + f)
        np.copyto(w, t, where=m)
        np.copyto(v, 1 - t, where=m)
        m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)  # edge ac
        np.copyto(v, 0, where=m)
        np.copyto(w, d2 / (d2 - d6), where=m)
        m = (d6 >= 0) & (d5 <= d6)  # vertex c
        np.copyto(v, 0, where=m)
        np.copyto(w, 1, where=m)
        m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)  # edge ab
        np.copyto(v, d1 / (d1 - d3), where=m)
        np.copyto(w, 0, where=m)
        m = (d3 >= 0) & (d4 <= d3)  # vertex b
        np.copyto(v, 1, where=m)
        np.copyto(w, 0, where=m)
        m = (d1 <= 0) & (d2 <= 0)  # vertex a
        np.copyto(v, 0, where=m)
        np.copyto(w, 0, where=m)
    # p - x directly (no |p|^2 - 2 p.x + |x|^2 cancellation): exact near the surface.
    ap -= ab * v
    ap -= ac * w
    return ap


def point_triangle_distance(points: np.ndarray, mesh: MeshData, tri: np.ndarray, *, with_offset: bool = False):
    """Exact distances from points to triangles, pairwise.

    Parameters
    ----------
    points
        ``(n, 3)`` or ``(3, n)``-transposed-as-``(n, 3)`` float coordinates.
    mesh
        The prepared mesh.
    tri
        ``(n,)`` triangle index per point.
    with_offset
        Also return ``p - x`` (``(3, n)``), ``x`` the closest point on the triangle.

    Returns
    -------
    ``(n,)`` float32 distances, and the offsets when ``with_offset``.
    """
    p = np.ascontiguousarray(np.asarray(points, dtype=np.float32).T)
    dist = np.empty(p.shape[1], dtype=np.float32)
    off = np.empty((3, p.shape[1]), dtype=np.float32)
    for s in range(0, p.shape[1], PAIR_CHUNK):
        sl = slice(s, s + PAIR_CHUNK)
        o = _closest(p[:, sl], np.take(mesh.cols[:_EXACT_ROWS], tri[sl], axis=1))
        off[:, sl] = o
        dist[sl] = np.sqrt(np.einsum("ij,ij->j", o, o))
    return (dist, off) if with_offset else dist


def winding_number(points: np.ndarray, mesh: MeshData) -> np.ndarray:
    """Exact generalised winding number of points: the sum of solid angles over 4 pi.

    Van Oosterom-Strackee solid angle per triangle; one evaluation per point and
    triangle, in chunks of `GWN_CHUNK` pairs.

    Parameters
    ----------
    points
        ``(n, 3)`` coordinates.
    mesh
        The prepared mesh.

    Returns
    -------
    ``(n,)`` float64: about 1 inside a closed, outward-oriented mesh and 0 outside; in
    between across the holes of an open one.
    """
    pts = np.asarray(points, dtype=np.float32)
    out = np.empty(len(pts))
    step = max(1, GWN_CHUNK // max(mesh.n_faces, 1))
    (ax, ay, az), (bx, by, bz), (cx, cy, cz) = mesh.verts
    for s in range(0, len(pts), step):
        p = pts[s : s + step]
        px, py, pz = p[:, 0, None], p[:, 1, None], p[:, 2, None]
        Ax, Ay, Az = ax - px, ay - py, az - pz  # (k, F) each
        Bx, By, Bz = bx - px, by - py, bz - pz
        Cx, Cy, Cz = cx - px, cy - py, cz - pz
        la = np.sqrt(Ax * Ax + Ay * Ay + Az * Az)
        lb = np.sqrt(Bx * Bx + By * By + Bz * Bz)
        lc = np.sqrt(Cx * Cx + Cy * Cy + Cz * Cz)
        num = Ax * (By * Cz - Bz * Cy) + Ay * (Bz * Cx - Bx * Cz) + Az * (Bx * Cy - By * Cx)
        den = la * lb * lc
        den += (Ax * Bx + Ay * By + Az * Bz) * lc
        den += (Bx * Cx + By * Cy + Bz * Cz) * la
        den += (Cx * Ax + Cy * Ay + Cz * Az) * lb
        out[s : s + step] = np.arctan2(num, den).sum(1, dtype=np.float64) / (2 * math.pi)
    return out


def sdf_block(
    mesh: MeshData, resolution: int, slices: tuple[slice, slice, slice], *, threads: int | None = None
) -> np.ndarray:
    """Signed distances of a block of the ``resolution``³ grid over [-0.5, 0.5]³ (negative inside).

    The block is covered by the global ``TILE``³ cells that meet it, processed one at a
    time: memory does not grow with the block or the resolution, and a voxel gets the
    same value whichever block it is computed in.

    Parameters
    ----------
    mesh
        The prepared, normalised mesh.
    resolution
        Voxels per grid axis (>= 2).
    slices
        Three slices with explicit ``start`` and ``stop`` inside the grid.
    threads
        Tiles computed at once (default: the CPUs this process may use).

    Returns
    -------
    ``(dx, dy, dz)`` float32 array.
    """
    R = int(resolution)
    want_lo = np.array([s.start for s in slices], dtype=np.int64)
    want_hi = np.array([s.stop for s in slices], dtype=np.int64)
    out = np.empty(tuple(want_hi - want_lo), dtype=np.float32)
    starts = [range((lo // TILE) * TILE, hi, TILE) for lo, hi in zip(want_lo, want_hi)]
    jobs = []
    for t_lo in itertools.product(*starts):
        t_lo = np.array(t_lo, dtype=np.int64)
        o_lo = np.maximum(t_lo, want_lo)
        o_hi = np.minimum(t_lo + TILE, want_hi)
        jobs.append((t_lo, o_lo, o_hi))

    def run(job):
        t_lo, o_lo, o_hi = job
        dst = tuple(slice(a - b, c - b) for a, b, c in zip(o_lo, want_lo, o_hi))
        out[dst] = _sdf_tile(mesh, R, t_lo, o_lo, o_hi)

    workers = min(len(jobs), threads or _default_threads())
    if workers <= 1:
        for job in jobs:
            run(job)
    else:
        # numpy releases the GIL in its loops, so tiles computed in threads use the cores.
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(run, jobs):
                pass
    return out


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# The 8 children of a cell, as signs per axis; children are numbered child-major
# (k * n_cells + cell) so that the pairs np.nonzero returns come out grouped by child.
_SIGNS = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.int64)


def _centres(lo: np.ndarray, size: int, h: float) -> np.ndarray:
    """``(3, n)`` float32 centres of the cubic cells of ``size`` voxels starting at ``lo``.

    Cells are whole cubes even where they stick out of the grid (coordinates just
    extend linearly there), so that every cell of a level has the same radius and the
    same child offsets.
    """
    return (-0.5 + (lo.T + (size - 1) / 2.0) * h).astype(np.float32)


def _exact(mesh: MeshData, centre: np.ndarray, cell: np.ndarray, tri: np.ndarray, *, with_u: bool = True):
    """Exact distances of pairs (cell centre, triangle) and unit directions from the closest point.

    Returns ``dist (n,)`` and ``u (3, n)`` with ``u = (c - x) / |c - x|`` (0 where the
    distance is 0). ``u`` gives every pair a lower bound valid for *any* point ``q``:
    ``dist(q, t) >= dist(c, t) + (q - c) . u``, because the triangle is convex and lies
    behind the plane through ``x`` normal to ``u``. ``u`` is None without ``with_u``.
    """
    n = len(cell)
    dist = np.empty(n, dtype=np.float32)
    u = np.zeros((3, n), dtype=np.float32) if with_u else None
    cols = mesh.cols[:_EXACT_ROWS]
    for s in range(0, n, PAIR_CHUNK):
        sl = slice(s, s + PAIR_CHUNK)
        o = _closest(np.take(centre, cell[sl], axis=1), np.take(cols, tri[sl], axis=1))
        dd = np.sqrt(np.einsum("ij,ij->j", o, o))
        dist[sl] = dd
        if with_u:
            np.divide(o, dd, out=u[:, sl], where=dd > 0)
    return dist, u


def _child_lower_bounds(dist: np.ndarray, u: np.ndarray, step: np.float32) -> np.ndarray:
    """``(8, pairs)`` half-space lower bounds ``dist + step * (s . u)`` for the 8 children.

    ``u`` is only as good as the offset it came from, so each bound is relaxed by
    ``|delta| * min(1, _DIR_TOL / dist)``. Rows follow `_SIGNS`; written as sums of
    partial sums (a (8, 3) @ (3, n) matmul is several times slower).
    """
    slack = np.minimum(1.0, _DIR_TOL / np.maximum(dist, 1e-30))
    slack *= np.float32(math.sqrt(3.0)) * step
    base = dist - slack
    sa, sb, sc = u[0] * step, u[1] * step, u[2] * step
    plus, minus = sa + sb, sa - sb
    out = np.empty((8, len(dist)), dtype=np.float32)
    for row, (xy, sz) in enumerate(((-plus, -1), (-plus, 1), (-minus, -1), (-minus, 1), (minus, -1), (minus, 1), (plus, -1), (plus, 1))):
        np.add(base, xy, out=out[row])
        if sz > 0:
            out[row] += sc
        else:
            out[row] -= sc
    return out


def _segment_starts(cell: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(cell, minlength=n)
    if not counts.all():  # every cell keeps at least its nearest triangle
        raise RuntimeError("sdf: a cell lost all its candidate triangles")
    return np.cumsum(counts) - counts


def _sdf_tile(mesh: MeshData, R: int, t_lo: np.ndarray, o_lo: np.ndarray, o_hi: np.ndarray) -> np.ndarray:
    """Signed distances of the voxels [o_lo, o_hi) of the global tile starting at ``t_lo``.

    Pairs (cell, candidate triangle) stay sorted by cell, so per-cell minima are segment
    reductions. From a cell to its children, a candidate is kept for a child only if its
    half-space lower bound does not exceed an upper bound of the child's distance plus
    the child's diameter (the child's exact candidate rule, relaxed to bounds).
    """
    h = 1.0 / (R - 1)
    size = TILE
    lo = t_lo[None]
    centre = _centres(lo, size, h)
    cell = np.zeros(mesh.n_faces, dtype=np.int64)
    tri = np.arange(mesh.n_faces, dtype=np.int64)
    dist, u = _exact(mesh, centre, cell, tri)
    sign = np.zeros(1, dtype=np.int8)  # per cell: +1 outside, -1 inside, 0 not known yet
    while True:
        n = len(lo)
        starts = _segment_starts(cell, n)
        d = np.minimum.reduceat(dist, starts)
        if size == 1:
            break
        if size >= GWN_MIN_CELL:
            r = math.sqrt(3.0) * (size - 1) / 2.0 * h
            _far_signs(mesh, centre, r, d, sign, final=size == GWN_MIN_CELL)
        is_best = np.flatnonzero(dist == d[cell])
        best = np.empty(n, dtype=np.int64)  # a pair achieving the cell's distance
        best[cell[is_best]] = is_best
        # Children (k-major), kept where they meet the wanted box.
        size //= 2
        c_lo = lo[None] + _SIGNS[:, None, :].clip(0) * size  # (8, n, 3)
        valid = ((c_lo < o_hi) & (c_lo + size > o_lo)).all(axis=2)  # (8, n)
        c_lo = c_lo[valid]
        c_centre = _centres(c_lo, size, h)
        parent = np.broadcast_to(np.arange(n), (8, n))[valid]
        c_r = math.sqrt(3.0) * (size - 1) / 2.0 * h
        # Upper bound of a child's distance: its distance to the point x of the parent's
        # nearest triangle, |c - x + delta| (no triangle evaluated).
        step = size / 2.0 * h  # child centre - parent centre = step * sign, per axis
        k_of = np.broadcast_to(np.arange(8)[:, None], (8, n))[valid]
        bp = best[parent]
        bd = dist[bp].astype(np.float64)
        along = np.einsum("ij,ji->j", np.take(u, bp, axis=1), (_SIGNS[k_of] * step).astype(np.float32))
        upper = np.sqrt(np.maximum(bd * bd + 2 * bd * along + 3 * step * step, 0)) + 4 * _EPS
        bound = np.full((8, n), -np.inf, dtype=np.float32)
        bound[valid] = upper + (2 * c_r + _EPS)
        # Half-space lower bounds of every pair for the 8 children at once; u is only as
        # good as the offset it came from, so the bound is relaxed near the surface.
        lower = _child_lower_bounds(dist, u, np.float32(step))
        k, j = np.nonzero(lower <= np.take(bound, cell, axis=1))
        child = (np.cumsum(valid.ravel()) - 1)[k * n + cell[j]]
        cell, tri = child, tri[j]
        # Voxels need no directions (the few near-surface signs recompute theirs).
        dist, u = _exact(mesh, c_centre, cell, tri, with_u=size > 1)
        lo, centre, sign = c_lo, c_centre, np.broadcast_to(sign, (8, n))[valid]
    # The cells are now single voxels.
    todo = np.flatnonzero(sign == 0)
    if todo.size:
        sign[todo] = _near_signs(mesh, centre, d, cell, tri, dist, todo)
    out = np.empty(tuple(o_hi - o_lo), dtype=np.float32)
    out[tuple((lo - o_lo).T)] = d * sign
    return out



def _far_signs(mesh: MeshData, centre, r, d, sign, *, final: bool) -> None:
    """Winding-number signs for cells that just moved off the surface (in place)."""
    idx = np.flatnonzero((sign == 0) & (d > GWN_MARGIN * r))
    if not idx.size:
        return
    w = winding_number(centre[:, idx].T, mesh)
    # Near a hole w passes 0.5 away from the surface: split such cells further.
    sure = final | (np.abs(w - 0.5) >= GWN_AMBIGUOUS)
    sign[idx[sure]] = np.where(w[sure] >= 0.5, -1, 1)


def _near_signs(mesh: MeshData, points, d, cell, tri, dist, todo: np.ndarray) -> np.ndarray:
    """Signs of voxels near the surface: the nearest face's side, or the winding number at rims.

    Among the triangles at (nearly) the minimum distance, the one whose normal is most
    parallel to ``p - x`` decides: that is the face itself when ``x`` is inside a face and
    agrees with the edge pseudo-normal when ``x`` is on an edge.
    """
    n = len(d)
    want = np.zeros(n, dtype=bool)
    want[todo] = True
    tied = want[cell] & (dist <= d[cell] * (1 + 1e-5) + _EPS)
    pc, pt = cell[tied], tri[tied]
    _, u = _exact(mesh, points, pc, pt)
    cos = np.einsum("ij,ij->j", u, np.take(mesh.cols[_N : _N + 3], pt, axis=1))
    best_pos = np.full(n, -2.0, dtype=np.float32)
    best_neg = np.full(n, -2.0, dtype=np.float32)
    np.maximum.at(best_pos, pc, cos)
    np.maximum.at(best_neg, pc, -cos)
    sign = np.where(best_pos >= best_neg, 1, -1).astype(np.int8)
    # Nearest point on a rim of the mesh: the face side means nothing there.
    on_face = np.maximum(best_pos, best_neg) >= 0.999
    rim = _on_rim(mesh, points, d, pc, pt)
    exact = np.flatnonzero(want & rim & ~on_face)
    if exact.size:
        w = winding_number(points[:, exact].T, mesh)
        sign[exact] = np.where(w >= 0.5, -1, 1)
    return sign[todo]


def _on_rim(mesh: MeshData, points, d, pc, pt) -> np.ndarray:
    """Per point: some tied triangle has a rim edge as near as the surface (``(n,)`` bool)."""
    rim = np.zeros(len(d), dtype=bool)
    has = mesh.rim_edges[pt].any(axis=1)
    pc, pt = pc[has], pt[has]
    if not pc.size:
        return rim
    q = points[:, pc].astype(np.float64)
    g = mesh.cols[:, pt].astype(np.float64)
    a, ab, ac = g[_A : _A + 3], g[_AB : _AB + 3], g[_AC : _AC + 3]
    near = np.zeros(len(pc), dtype=bool)
    for e, (p0, seg) in enumerate([(a, ab), (a + ab, ac - ab), (a + ac, -ac)]):
        t = np.clip(np.einsum("ij,ij->j", q - p0, seg) / np.einsum("ij,ij->j", seg, seg), 0, 1)
        gap = np.linalg.norm(q - p0 - seg * t, axis=0)
        near |= mesh.rim_edges[pt, e] & (gap <= d[pc] * (1 + 1e-5) + 4 * _EPS)
    rim[pc[near]] = True
    return rim
