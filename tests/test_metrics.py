"""Metric kernels against their whole-signal oracles (scikit-image, numpy, trimesh)."""

import math

import numpy as np
import pytest
from PIL import Image
from skimage.measure import marching_cubes
from skimage.metrics import structural_similarity

from intstream.export import dequantize_rows, quantize_rows
from intstream.metrics import (
    ErrorSums,
    SlabMesher,
    chamfer_distance,
    chunked_ssim,
    iou_from_counts,
    occupancy_counts,
    psnr_from_mse,
    ssim_block_sums,
    ssim_halo,
)
from intstream.store import block_slices


@pytest.fixture(scope="module")
def kodak_pair(data_dir):
    x = np.asarray(Image.open(data_dir / "kodak" / "kodim05.png").convert("RGB"))
    rng = np.random.default_rng(0)
    y = np.clip(x.astype(np.int16) + rng.normal(0, 9, x.shape), 0, 255).astype(np.uint8)
    return x, y


@pytest.mark.parametrize("block", [(100, 137), (512, 768), (1000, 1000), (31, 45)])
def test_chunked_ssim_equals_skimage_on_kodak(kodak_pair, block):
    x, y = kodak_pair
    ref = structural_similarity(x, y, channel_axis=-1, data_range=255)
    assert abs(chunked_ssim(x, y, block, data_range=255) - ref) < 1e-8


def test_chunked_ssim_tiny_ragged_blocks_gray_and_float(kodak_pair):
    x, y = (a[100:180, 200:297] for a in kodak_pair)  # blocks smaller than the window
    ref = structural_similarity(x[..., 1], y[..., 1], data_range=255)
    assert abs(chunked_ssim(x[..., 1], y[..., 1], (5, 9), data_range=255) - ref) < 1e-8
    xf, yf = x / 255.0, y / 255.0
    ref = structural_similarity(xf, yf, channel_axis=-1, data_range=1.0)
    assert abs(chunked_ssim(xf, yf, (17, 23), data_range=1.0) - ref) < 1e-8


def test_ssim_halo_scores_each_interior_pixel_once():
    shape, r = (50, 37), 3
    seen = np.zeros(shape, dtype=int)
    for blk in block_slices(shape, (8, 11)):
        halo, core = ssim_halo(blk, shape)
        assert all(0 <= h.start <= h.stop <= n for h, n in zip(halo, shape))
        rows = slice(halo[0].start + core[0].start, halo[0].start + core[0].stop)
        cols = slice(halo[1].start + core[1].start, halo[1].start + core[1].stop)
        seen[rows, cols] += 1
    expect = np.zeros(shape, dtype=int)
    expect[r:-r, r:-r] = 1
    assert (seen == expect).all()


def test_ssim_block_needs_whole_window():
    a = np.zeros((10, 10))
    with pytest.raises(ValueError):
        ssim_block_sums(a, a, (slice(0, 5), slice(3, 7)), data_range=1.0)


def test_error_sums_blockwise_equal_whole():
    rng = np.random.default_rng(1)
    t = rng.random((1000, 2))
    p = t + rng.normal(0, 0.01, t.shape)
    acc = ErrorSums()
    for s in range(0, 1000, 333):
        acc.add(p[s : s + 333], t[s : s + 333])
    mse = np.mean((p - t) ** 2)
    assert acc.mse == pytest.approx(mse, rel=1e-12)
    assert acc.psnr() == pytest.approx(10 * np.log10(1 / mse), rel=1e-12)
    assert acc.snr() == pytest.approx(10 * np.log10(np.sum(t**2) / np.sum((p - t) ** 2)), rel=1e-12)
    assert psnr_from_mse(0.0) == math.inf


def _sphere_sdf(n, r, centre=(0, 0, 0)):
    c = np.linspace(-1, 1, n)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) - r


def test_iou():
    a = _sphere_sdf(24, 0.5)
    assert iou_from_counts(*occupancy_counts(a, a)) == 1.0
    b = np.ones_like(a)
    assert iou_from_counts(*occupancy_counts(b, b)) == 1.0  # both empty agree
    i, u = occupancy_counts(a, b)
    assert iou_from_counts(i, u) == 0.0
    half = np.where(np.arange(24)[:, None, None] < 12, -1.0, 1.0) * np.ones((24, 24, 24))
    full = -np.ones((24, 24, 24))
    assert iou_from_counts(*occupancy_counts(half, full)) == pytest.approx(0.5)


def test_slab_meshing_equals_whole_grid_marching_cubes():
    n = 40
    sdf = _sphere_sdf(n, 0.6, (0.1, -0.05, 0.0)).astype(np.float32)
    spacing = np.full(3, 2.0 / (n - 1))
    origin = np.full(3, -1.0)
    v, f, _, _ = marching_cubes(sdf, 0.0, spacing=tuple(spacing))
    whole_area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1).sum() / 2
    mesher = SlabMesher(origin, spacing)
    for s in range(0, n, 7):
        mesher.add(s, sdf[s : s + 7])
    vs, fs = mesher.mesh()
    area = np.linalg.norm(np.cross(vs[fs[:, 1]] - vs[fs[:, 0]], vs[fs[:, 2]] - vs[fs[:, 0]]), axis=1).sum() / 2
    assert len(fs) == len(f)
    assert area == pytest.approx(whole_area, rel=1e-9)
    assert np.allclose(vs.min(0), (v + origin).min(0)) and np.allclose(vs.max(0), (v + origin).max(0))


def test_chamfer():
    n = 48
    spacing, origin = np.full(3, 2.0 / (n - 1)), np.full(3, -1.0)

    def mesh(r):
        m = SlabMesher(origin, spacing)
        m.add(0, _sphere_sdf(n, r).astype(np.float32))
        return m.mesh()

    a, b = mesh(0.5), mesh(0.6)
    assert chamfer_distance(*a, *a, n_points=20000) == 0.0
    # Two concentric spheres 0.1 apart: each direction ~0.1.
    assert chamfer_distance(*a, *b, n_points=20000) == pytest.approx(0.2, abs=0.02)
    empty = (np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    assert chamfer_distance(*empty, *empty) == 0.0
    assert chamfer_distance(*a, *empty) == math.inf


def test_int8_rows_roundtrip():
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (64, 48)).astype(np.float32)
    w[3] = np.abs(w[3])  # an all-positive row still represents 0 exactly
    w[5] = 0.0
    q, scale, zero = quantize_rows(w)
    assert q.dtype == np.int8 and zero.dtype == np.int8 and scale.shape == (64,)
    back = dequantize_rows(q, scale, zero)
    assert np.all(np.abs(back - w) <= scale[:, None] / 2 + 1e-7)
    assert dequantize_rows(zero[:, None].repeat(2, 1), scale, zero).max() == 0.0
    assert (back[5] == 0).all()
