"""Quality metrics as pure, chunk-friendly kernels.

Every metric here is written so that it can be accumulated block by block over a signal
that does not fit in memory, and the accumulated value equals the whole-signal value:

- `ErrorSums` accumulates squared errors and signal power -> PSNR and SNR.
- `ssim_block_sums` scores one block read with a halo; `ssim_halo` says which halo a
  block needs. Summed over any tiling of the image they give exactly scikit-image's
  ``structural_similarity`` (uniform 7x7 window, sample covariance, border strip of
  ``win_size // 2`` excluded), see `chunked_ssim`.
- `SpectralDistance` accumulates the log-spectral distance (LSD) of audio over
  consecutive blocks (frames that straddle blocks are carried over), equal to
  `log_spectral_distance` of the whole signal; `speech_scores` gives PESQ/STOI
  where the optional packages are installed (they need the whole signal).
- `occupancy_counts` -> IoU of the ``sdf <= 0`` occupancy.
- `marching_cubes_blocks` meshes a grid block by block (cells overlap by one sample, so
  every cube of the grid is meshed exactly once), `SlabMesher` accumulates one mesh from
  consecutive slabs placed by `sdf_geometry`, and `chamfer_distance` compares two
  surfaces by sampled points.

No torch here: these take and return NumPy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .normalize import Normalisation
from .store import block_slices

__all__ = [
    "psnr_from_mse",
    "snr_db",
    "ErrorSums",
    "ssim_halo",
    "ssim_block_sums",
    "chunked_ssim",
    "occupancy_counts",
    "iou_from_counts",
    "marching_cubes_block",
    "sdf_geometry",
    "SlabMesher",
    "chamfer_distance",
    "audio_full_scale",
    "LSD_N_FFT",
    "LSD_HOP",
    "LSD_EPS",
    "log_spectral_distance",
    "SpectralDistance",
    "speech_scores",
]

# scikit-image's structural_similarity defaults.
SSIM_WIN = 7
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr_from_mse(mse: float, data_range: float = 1.0) -> float:
    """``10 log10(data_range² / mse)`` in dB; ``inf`` for a perfect match."""
    if mse <= 0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def snr_db(signal_power: float, noise_power: float) -> float:
    """``10 log10(Σ y² / Σ (ŷ - y)²)`` in dB; ``inf`` when there is no noise."""
    if noise_power <= 0:
        return math.inf
    if signal_power <= 0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class ErrorSums:
    """Running sums for PSNR/SNR over blocks, in float64 (exact enough for 10^12 samples).

    ``add(pred, target)`` takes arrays of equal shape. ``mse`` is per value (samples x
    channels), the usual PSNR convention for colour images.
    """

    sq_err: float = 0.0
    power: float = 0.0
    count: int = 0

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        t = np.asarray(target, dtype=np.float64).ravel()
        d = np.asarray(pred, dtype=np.float64).ravel() - t
        self.sq_err += float(np.dot(d, d))
        self.power += float(np.dot(t, t))
        self.count += d.size

    @property
    def mse(self) -> float:
        return self.sq_err / self.count if self.count else math.nan

    def psnr(self, data_range: float = 1.0) -> float:
        return psnr_from_mse(self.mse, data_range)

    def snr(self) -> float:
        return snr_db(self.power, self.sq_err)


# -- SSIM ---------------------------------------------------------------------------


def ssim_halo(
    block: tuple[slice, ...], shape: tuple[int, ...], *, win_size: int = SSIM_WIN
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The halo a block needs for SSIM, and the pixels it scores.

    Only pixels at least ``win_size // 2`` from every image border are scored
    (scikit-image crops that strip, so reflect padding never matters); each scored pixel
    needs the ``win_size`` window around it.

    Parameters
    ----------
    block
        Grid slices (step 1) of the block, e.g. a store chunk.
    shape
        The image's grid shape.

    Returns
    -------
    (halo, core)
        ``halo``: grid slices to read (the block grown by the window radius, clipped to
        the image). ``core``: slices *relative to the halo block* of the pixels this
        block scores (may be empty).
    """
    r = (win_size - 1) // 2
    halo, core = [], []
    for s, n in zip(block, shape):
        lo, hi = max(s.start, r), min(s.stop, n - r)  # scored pixels of this block
        hi = max(hi, lo)
        h0, h1 = max(lo - r, 0), min(hi + r, n)
        if hi == lo:
            h0 = h1 = s.start
        halo.append(slice(h0, h1))
        core.append(slice(lo - h0, hi - h0))
    return tuple(halo), tuple(core)


def _box_mean(a: np.ndarray, win: int) -> np.ndarray:
    """Mean over every full ``win x win`` window of a 2-D array ("valid" positions).

    The same filter scikit-image uses (``scipy.ndimage.uniform_filter``), cropped to the
    positions whose window lies inside ``a``, so border handling never enters.
    """
    from scipy.ndimage import uniform_filter

    r = (win - 1) // 2
    return uniform_filter(a, size=win)[r : a.shape[0] - r, r : a.shape[1] - r]


def ssim_block_sums(
    x: np.ndarray,
    y: np.ndarray,
    core: tuple[slice, slice],
    *,
    data_range: float,
    win_size: int = SSIM_WIN,
    K1: float = SSIM_K1,
    K2: float = SSIM_K2,
) -> tuple[np.ndarray, int]:
    """Sum of the SSIM map over the ``core`` pixels of a halo block, per channel.

    Parameters
    ----------
    x, y
        ``(h, w)`` or ``(h, w, channels)`` halo blocks (any real dtype; computed in float64).
    core
        Slices into the block of the pixels to score; each must have its whole window
        inside the block (what `ssim_halo` guarantees).
    data_range
        As scikit-image's ``data_range`` (255 for uint8 values, 1 for [0, 1] values).

    Returns
    -------
    (sums, count)
        ``sums``: ``(channels,)`` float64 sums of the SSIM map; ``count``: scored pixels.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"SSIM blocks differ in shape: {x.shape} vs {y.shape}")
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    r = (win_size - 1) // 2
    (r0, r1), (c0, c1) = ((s.start, s.stop) for s in core)
    channels = x.shape[-1]
    if r1 <= r0 or c1 <= c0:
        return np.zeros(channels), 0
    if r0 < r or c0 < r or r1 + r > x.shape[0] or c1 + r > x.shape[1]:
        raise ValueError("SSIM core pixels need their whole window inside the block")
    # Only the window span of the core is needed.
    rows, cols = slice(r0 - r, r1 + r), slice(c0 - r, c1 + r)
    n_win = win_size * win_size
    cov_norm = n_win / (n_win - 1)  # scikit-image's default sample covariance
    C1 = (K1 * data_range) ** 2
    C2 = (K2 * data_range) ** 2
    sums = np.zeros(channels)
    for ch in range(channels):
        a = x[rows, cols, ch].astype(np.float64)
        b = y[rows, cols, ch].astype(np.float64)
        ux, uy = _box_mean(a, win_size), _box_mean(b, win_size)
        vx = cov_norm * (_box_mean(a * a, win_size) - ux * ux)
        vy = cov_norm * (_box_mean(b * b, win_size) - uy * uy)
        vxy = cov_norm * (_box_mean(a * b, win_size) - ux * uy)
        s = ((2 * ux * uy + C1) * (2 * vxy + C2)) / ((ux * ux + uy * uy + C1) * (vx + vy + C2))
        sums[ch] = s.sum()
    return sums, (r1 - r0) * (c1 - c0)


def chunked_ssim(
    x: np.ndarray,
    y: np.ndarray,
    block: tuple[int, int],
    *,
    data_range: float,
    win_size: int = SSIM_WIN,
) -> float:
    """Mean SSIM of two in-memory images computed block by block with halos.

    The reference for the streaming evaluation: equals
    ``skimage.metrics.structural_similarity(x, y, channel_axis=-1, data_range=...)``
    (or without ``channel_axis`` for 2-D images) for any ``block`` size.
    """
    shape = x.shape[:2]
    if min(shape) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size} pixels, got {shape}")
    total, count = None, 0
    for blk in block_slices(shape, block):
        halo, core = ssim_halo(blk, shape, win_size=win_size)
        sums, n = ssim_block_sums(x[halo], y[halo], core, data_range=data_range, win_size=win_size)
        total = sums if total is None else total + sums
        count += n
    return float(np.mean(total / count))


# -- SDF ----------------------------------------------------------------------------


def occupancy_counts(pred_sdf: np.ndarray, true_sdf: np.ndarray) -> tuple[int, int]:
    """``(intersection, union)`` voxel counts of the occupancies ``sdf <= 0``."""
    a = np.asarray(pred_sdf) <= 0
    b = np.asarray(true_sdf) <= 0
    return int(np.count_nonzero(a & b)), int(np.count_nonzero(a | b))


def iou_from_counts(intersection: int, union: int) -> float:
    """Intersection over union; two empty occupancies agree perfectly (1.0)."""
    return 1.0 if union == 0 else intersection / union


def marching_cubes_block(
    sdf: np.ndarray, origin: np.ndarray, spacing: np.ndarray, *, level: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Mesh the ``level`` surface of one grid block (no surface: empty arrays).

    ``sdf`` is a ``(nz, ny, nx)`` block whose sample ``[0, 0, 0]`` sits at ``origin``
    and whose samples are ``spacing`` apart (per axis, in the coordinates the caller
    wants the vertices in). Blocks that share their boundary samples mesh each cube of
    the grid exactly once, so meshes of such blocks concatenate into the whole surface
    (vertices on shared faces are duplicated; weld them with trimesh if needed).
    """
    from skimage.measure import marching_cubes

    sdf = np.asarray(sdf, dtype=np.float32)
    if min(sdf.shape) < 2 or not (sdf.min() <= level <= sdf.max()) or sdf.min() == sdf.max():
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    verts, faces, _, _ = marching_cubes(sdf, level=level, spacing=tuple(float(s) for s in spacing))
    return verts.astype(np.float64) + np.asarray(origin, dtype=np.float64), faces.astype(np.int64)


def sdf_geometry(signal: dict, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per grid axis ``(origin, spacing)`` of the samples, in normalised-box units.

    Mesh vertices from marching cubes (in index units) map to ``origin + spacing * i``.
    The box is ``signal["sdf"]["bounds"]`` (``[lo, hi]`` for every axis, or per-axis
    lists), the units the distances are stored in, so Chamfer distances and the mesh
    agree with the SDF values. Without recorded bounds, the network's own coordinates
    (``linspace(-extent, extent, n)``) are used.
    """
    bounds = (signal.get("sdf") or {}).get("bounds")
    ndim = len(shape)
    if bounds is not None:
        lo = np.broadcast_to(np.asarray(bounds[0], dtype=np.float64), (ndim,))
        hi = np.broadcast_to(np.asarray(bounds[1], dtype=np.float64), (ndim,))
    else:
        extent = np.asarray(Normalisation.from_dict(signal["normalisation"]).extent, dtype=np.float64)
        lo, hi = -extent, extent
    n = np.asarray(shape, dtype=np.float64)
    spacing = np.where(n > 1, (hi - lo) / np.maximum(n - 1, 1), 1.0)
    return lo.copy(), spacing


class SlabMesher:
    """Accumulates a marching-cubes mesh from consecutive slabs along axis 0.

    Each slab is meshed together with the last plane of the previous one, so every cube
    of the grid is meshed exactly once and memory is one slab plus the mesh.
    """

    def __init__(self, origin: np.ndarray, spacing: np.ndarray, *, level: float = 0.0):
        self.origin, self.spacing, self.level = np.asarray(origin), np.asarray(spacing), level
        self._carry = None
        self._carry_start = 0
        self._verts, self._faces, self._n = [], [], 0

    def add(self, start: int, slab: np.ndarray) -> None:
        slab = np.asarray(slab, dtype=np.float32)
        if self._carry is not None:
            if self._carry_start + 1 != start:
                raise ValueError("slabs must arrive in order along axis 0")
            block, first = np.concatenate([self._carry[None], slab]), start - 1
        else:
            block, first = slab, start
        origin = self.origin.copy()
        origin[0] += first * self.spacing[0]
        v, f = marching_cubes_block(block, origin, self.spacing, level=self.level)
        if len(f):
            self._verts.append(v)
            self._faces.append(f + self._n)
            self._n += len(v)
        self._carry, self._carry_start = slab[-1].copy(), start + slab.shape[0] - 1

    def mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """``(vertices (n, 3) float64, faces (m, 3) int64)``; empty arrays when no surface."""
        if not self._faces:
            return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
        return np.concatenate(self._verts), np.concatenate(self._faces)


def chamfer_distance(
    verts_a: np.ndarray,
    faces_a: np.ndarray,
    verts_b: np.ndarray,
    faces_b: np.ndarray,
    *,
    n_points: int = 30_000,
    seed: int = 0,
) -> float:
    """Symmetric Chamfer distance between two triangle meshes.

    ``mean_a min_b |a - b| + mean_b min_a |a - b|`` over ``n_points`` points sampled
    uniformly by area on each surface (a fixed seed, so reruns agree). Sampling by area
    rather than taking vertices keeps the figure independent of how finely each mesh
    is tessellated; both surfaces use the same seed, so a mesh against itself scores
    exactly 0. An empty mesh against a non-empty one is ``inf``; two empty: 0.
    """
    import trimesh
    from scipy.spatial import cKDTree

    empty_a, empty_b = len(faces_a) == 0, len(faces_b) == 0
    if empty_a and empty_b:
        return 0.0
    if empty_a or empty_b:
        return math.inf

    def sample(v, f):
        # The same seed for both surfaces: identical meshes get identical points (Chamfer 0).
        mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
        pts, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
        return np.asarray(pts)

    pa, pb = sample(verts_a, faces_a), sample(verts_b, faces_b)
    # Nearly concentric surfaces (a poor fit inside its target) make k-d tree queries
    # close to brute force: n_points bounds that worst case (~1 s at 30k on one core);
    # bigger leaves prune better there and cost nothing for close surfaces.
    d_ab, _ = cKDTree(pb, leafsize=64).query(pa)
    d_ba, _ = cKDTree(pa, leafsize=64).query(pb)
    return float(d_ab.mean() + d_ba.mean())


# -- audio --------------------------------------------------------------------------

# LSD framing: 2048-sample Hann frames every 512 samples, power spectra floored at 1e-10
# (the definition of the audio super-resolution literature, e.g. Kuleshov et al. 2017,
# NVSR/AudioSR: mean over frames of the RMS over frequency of log10 power differences).
LSD_N_FFT = 2048
LSD_HOP = 512
LSD_EPS = 1e-10


def audio_full_scale(dtype: str | np.dtype) -> float:
    """The value that maps to 1.0 on the [-1, 1] scale: 2^(bits-1) for PCM, 1 for float.

    The paper (and torchaudio/soundfile) read 16-bit PCM as ``x / 32768``; its PSNR is
    ``10 log10(2² / MSE)`` on that scale (data range 2).
    """
    dt = np.dtype(dtype)
    return float(-np.iinfo(dt).min) if dt.kind == "i" else 1.0


def _frame_lsd(pred: np.ndarray, target: np.ndarray, n_fft: int, eps: float) -> np.ndarray:
    """Per-frame LSD of ``(frames, n_fft)`` arrays (float64)."""
    win = np.hanning(n_fft + 1)[:-1]  # periodic Hann, as scipy/torch's STFT
    P = np.abs(np.fft.rfft(pred * win, axis=-1)) ** 2
    T = np.abs(np.fft.rfft(target * win, axis=-1)) ** 2
    d = np.log10(P + eps) - np.log10(T + eps)
    return np.sqrt(np.mean(d * d, axis=-1))


def _frames(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    n = (len(x) - n_fft) // hop + 1
    return np.lib.stride_tricks.sliding_window_view(x, n_fft)[: n * hop : hop]


def log_spectral_distance(pred: np.ndarray, target: np.ndarray, *, n_fft: int = LSD_N_FFT,
                          hop: int = LSD_HOP, eps: float = LSD_EPS) -> float:
    """Log-spectral distance of two whole signals, ``(n,)`` or ``(n, channels)``.

    ``mean over frames and channels of sqrt(mean over frequency (log10 |P|² - log10 |T|²)²)``
    with `LSD_N_FFT`-sample periodic-Hann frames every `LSD_HOP` samples, no padding
    (a signal shorter than one frame is zero-padded to one frame). 0 is a perfect match;
    a fit that predicts the mean scores several units (bels) on speech.
    """
    acc = SpectralDistance(n_fft=n_fft, hop=hop, eps=eps)
    acc.add(pred, target)
    return acc.result()


class SpectralDistance:
    """`log_spectral_distance` accumulated over consecutive blocks of a signal.

    ``add(pred, target)`` takes the next ``(n, channels)`` block of both signals (on the
    [-1, 1] scale; blocks must arrive in order and without gaps). Frames that straddle
    two blocks are completed from a carried tail of ``n_fft - hop`` samples, so the result
    equals the whole-signal value for any blocking. Memory: one block plus one frame.
    """

    def __init__(self, *, n_fft: int = LSD_N_FFT, hop: int = LSD_HOP, eps: float = LSD_EPS):
        self.n_fft, self.hop, self.eps = n_fft, hop, eps
        self._p = self._t = None
        self.total, self.frames, self.seen = 0.0, 0, 0

    def add(self, pred: np.ndarray, target: np.ndarray) -> None:
        p = np.asarray(pred, dtype=np.float64)
        t = np.asarray(target, dtype=np.float64)
        if p.ndim == 1:
            p, t = p[:, None], t[:, None]
        self.seen += len(p)
        if self._p is not None:
            p, t = np.concatenate([self._p, p]), np.concatenate([self._t, t])
        n = (len(p) - self.n_fft) // self.hop + 1 if len(p) >= self.n_fft else 0
        for ch in range(p.shape[1]):
            if n:
                self.total += float(_frame_lsd(_frames(p[:, ch], self.n_fft, self.hop),
                                               _frames(t[:, ch], self.n_fft, self.hop), self.n_fft, self.eps).sum())
        self.frames += n * p.shape[1]
        self._p, self._t = p[n * self.hop:].copy(), t[n * self.hop:].copy()

    def result(self) -> float:
        if self.frames == 0:
            if self._p is None or len(self._p) == 0:
                return math.nan
            pad = ((0, self.n_fft - len(self._p)), (0, 0))
            p, t = np.pad(self._p, pad), np.pad(self._t, pad)
            return float(np.mean([_frame_lsd(p[None, :, ch], t[None, :, ch], self.n_fft, self.eps)[0]
                                  for ch in range(p.shape[1])]))
        return self.total / self.frames


def speech_scores(pred: np.ndarray, target: np.ndarray, sample_rate: int, which=("pesq", "stoi")) -> tuple[dict, dict]:
    """PESQ (ITU-T P.862, wide band at 16 kHz, narrow band at 8 kHz) and STOI of whole signals.

    ``pred``/``target``: ``(n,)`` or ``(n, channels)`` on the [-1, 1] scale; channels are
    scored separately and averaged. Needs the optional packages ``pesq`` and ``pystoi``
    (``pip install 'intstream[audio]'``).

    Returns
    -------
    (scores, skipped)
        ``scores``: metric -> value; ``skipped``: metric -> why it was not computed (not
        installed, unsupported sample rate, or the package's own error, e.g. no speech).
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    scores, skipped = {}, {}
    for name in which:
        try:
            if name == "pesq":
                from pesq import pesq as _pesq

                if sample_rate not in (8000, 16000):
                    skipped[name] = f"PESQ needs 8 or 16 kHz audio, not {sample_rate} Hz"
                    continue
                mode = "wb" if sample_rate == 16000 else "nb"
                scores[name] = float(np.mean([_pesq(sample_rate, t[:, c], p[:, c], mode) for c in range(p.shape[1])]))
            elif name == "stoi":
                from pystoi import stoi as _stoi

                scores[name] = float(np.mean([_stoi(t[:, c], p[:, c], sample_rate, extended=False)
                                              for c in range(p.shape[1])]))
        except ImportError:
            skipped[name] = "not installed (pip install 'intstream[audio]')"
        except Exception as exc:  # the packages raise on e.g. no utterance detected
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return scores, skipped
