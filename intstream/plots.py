"""Diagnostic plots for ``intstream eval --plot DIR`` (matplotlib, an optional extra).

matplotlib is imported only when a plot is drawn, with the Agg backend (no display),
so ``import intstream`` and the CLI never pay for it. Each function takes plain arrays
(already decoded at a capped resolution by `intstream.evaluate`) and writes one PNG
atomically; it returns the path.

Files: ``training.png`` (PSNR, loss, learning rate and teacher ratio from the run's log),
``teacher.png`` (where the teacher sampled: the run's ``teacher_map.npz``), and by kind
``error.png`` + ``worst_crops.png`` (images: a strided error map, and the worst regions
decoded at full resolution), ``waveform.png`` (audio: waveform, error, spectrograms),
``sdf_slice.png`` + ``mesh.png`` (SDF: a mid-slice, and marching cubes on a <= 64^3 grid).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .errors import InputError

__all__ = ["PLOT_FILES", "check_plot_dir", "training_curves", "image_error", "audio_error", "sdf_slice",
           "worst_regions", "worst_crops", "teacher_map", "sdf_mesh"]

PLOT_FILES = ("training.png", "error.png", "worst_crops.png", "teacher.png", "waveform.png", "sdf_slice.png",
              "mesh.png")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError(None, "--plot needs matplotlib: pip install 'intstream[plot]'") from None
    return plt


def check_plot_dir(path: str | os.PathLike, *, overwrite: bool) -> Path:
    """Create the plot folder; refuse to replace plots in it without ``overwrite``."""
    _pyplot()  # fail before any work when matplotlib is missing
    p = Path(path).absolute()
    if p.exists() and not p.is_dir():
        raise InputError(p, "--plot needs a folder, and this is a file")
    if not p.parent.exists():
        raise InputError(p, f"output folder {p.parent} does not exist")
    if not overwrite:
        clash = [f for f in PLOT_FILES if (p / f).exists()]
        if clash:
            raise InputError(p / clash[0], "output exists (pass --overwrite to replace it)")
    p.mkdir(exist_ok=True)
    return p


def _save(fig, out: Path) -> Path:
    plt = _pyplot()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _log_rows(log: Path) -> list[dict]:
    rows = []
    for line in Path(log).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: skip it
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def training_curves(log: Path, out: Path) -> Path:
    """From a run's ``log.jsonl``: PSNR against time and steps, the loss, and the learning
    rate with the teacher's selected ratio."""
    plt = _pyplot()
    rows = _log_rows(log)
    col = lambda key: np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])  # noqa: E731
    fig, ((a, b), (c, d)) = plt.subplots(2, 2, figsize=(10, 6.4))
    if rows:
        step, psnr = col("step"), col("psnr")
        a.plot(col("wall"), psnr, label="wall time")
        a.plot(col("train_seconds"), psnr, "--", label="training time")
        a.legend()
        b.plot(step, psnr)
        loss = col("loss")
        c.plot(step, loss, color="C3")
        if np.nanmin(loss, initial=np.inf) > 0:
            c.set_yscale("log")
        d.plot(step, col("lr"), color="C2", label="learning rate")
        d.set_yscale("log")
        r = d.twinx()
        r.plot(step, col("ratio"), color="C4", label="selected ratio")
        r.set(ylabel="selected ratio", ylim=(0, 1.05))
        d.legend(handles=d.get_lines() + r.get_lines(), loc="lower left")
    a.set(xlabel="seconds", ylabel="training PSNR (dB)", title="PSNR vs time")
    b.set(xlabel="step", ylabel="training PSNR (dB)", title="PSNR vs steps")
    c.set(xlabel="step", ylabel="loss (weighted MSE)", title="loss")
    d.set(xlabel="step", ylabel="learning rate", title="learning rate and teacher ratio")
    for ax in (a, b, c, d):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def worst_regions(err: np.ndarray, step: int, shape: tuple[int, int], *, size: int = 96, n: int = 4
                  ) -> list[tuple[int, int]]:
    """Top-left corners (full-resolution pixels) of the ``n`` worst ``size``-pixel squares.

    ``err`` is a per-pixel error map sampled every ``step`` pixels; it is cut into cells of
    about ``size`` full-resolution pixels and the cells with the largest mean error win
    (distinct cells, so the crops do not repeat one spot).
    """
    cell = max(1, size // step)
    h, w = err.shape
    hc, wc = max(1, h // cell), max(1, w // cell)
    cells = err[: hc * cell, : wc * cell].reshape(hc, cell, wc, cell).mean(axis=(1, 3)) if h >= cell and w >= cell \
        else np.array([[err.mean()]])
    order = np.argsort(cells, axis=None)[::-1][:n]
    out = []
    for k in order:
        i, j = divmod(int(k), cells.shape[1])
        r0 = min(i * cell * step, max(0, shape[0] - size))
        c0 = min(j * cell * step, max(0, shape[1] - size))
        out.append((r0, c0))
    return out


def worst_crops(crops: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]], out: Path) -> Path:
    """Full-resolution crops of the worst-error regions: target, decoded and |error| for each.

    ``crops``: ``(decoded, target, (row, col))`` on the [0, 1] scale.
    """
    plt = _pyplot()
    n = max(1, len(crops))
    fig, axes = plt.subplots(n, 3, figsize=(9, 3.1 * n), squeeze=False)
    for row, (pred, target, (r0, c0)) in zip(axes, crops):
        cmap = "gray" if pred.shape[-1] == 1 else None
        err = np.abs(pred - target).mean(axis=-1)
        psnr = 10 * np.log10(1.0 / max(float(np.mean((pred - target) ** 2)), 1e-12))
        row[0].imshow(_show(target), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        row[0].set_title(f"target at ({r0}, {c0})")
        row[1].imshow(_show(pred), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        row[1].set_title(f"decoded ({psnr:.1f} dB here)")
        im = row[2].imshow(err, cmap="inferno", interpolation="nearest")
        row[2].set_title("|error|")
        fig.colorbar(im, ax=row[2], fraction=0.046, pad=0.04)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, out)


def teacher_map(maps: list[tuple[str, np.ndarray]], out: Path) -> Path:
    """Where the teacher sampled: heatmaps (grid-shaped) such as the per-sample error
    estimates that drive its draws and how often each region was in the last selection."""
    plt = _pyplot()
    if all(m.ndim == 1 for _, m in maps):  # a 1-D signal: profiles along it
        fig, axes = plt.subplots(len(maps), 1, figsize=(10, 2.4 * len(maps)), squeeze=False)
        for ax, (title, m) in zip(axes[:, 0], maps):
            ax.plot(np.arange(len(m)), m, lw=0.8)
            ax.set(title=title, xlabel="map cell (along the signal)")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        return _save(fig, out)
    maps = [(title, np.atleast_2d(m)) for title, m in maps]
    # Each panel as wide as its map's aspect asks (a 16:1 strip is not squeezed into a square
    # panel), between a third and four times the height.
    aspect = [min(max(m.shape[1] / m.shape[0], 1 / 3), 4.0) for _, m in maps]
    fig, axes = plt.subplots(1, len(maps), figsize=(sum(3.6 * a + 1.0 for a in aspect), 4.0), squeeze=False,
                             gridspec_kw={"width_ratios": aspect})
    for ax, (title, m) in zip(axes[0], maps):
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", interpolation="nearest", aspect="auto")
        ax.set_title(title + f" ({m.shape[0]}x{m.shape[1]})", fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, out)


def sdf_mesh(meshes: list[tuple[str, np.ndarray, np.ndarray]], out: Path, *, grid: tuple[int, ...]) -> Path:
    """Shaded renders of zero-level meshes: ``(title, vertices (n, 3), faces (m, 3))`` each,
    vertices in (z, y, x) order as marching cubes gives them; ``grid`` is the sampled grid."""
    plt = _pyplot()
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = plt.figure(figsize=(4.8 * len(meshes), 4.8))
    light = np.array([0.4, 0.5, 0.77])
    for i, (title, verts, faces) in enumerate(meshes):
        ax = fig.add_subplot(1, len(meshes), i + 1, projection="3d")
        label = f"{title}, {len(faces)} faces ({'x'.join(map(str, grid))} grid)"
        if len(faces):
            xyz = verts[:, ::-1]  # x, y, z for the axes
            tri = xyz[faces]
            normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
            shade = 0.25 + 0.75 * np.abs(normal @ light)
            colors = plt.get_cmap("bone")(0.35 + 0.6 * shade)
            ax.add_collection3d(Poly3DCollection(tri, facecolors=colors, edgecolor="none", linewidth=0))
            lo, hi = xyz.min(axis=0), xyz.max(axis=0)
            c, r = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)
            ax.set(xlim=(c[0] - r, c[0] + r), ylim=(c[1] - r, c[1] + r), zlim=(c[2] - r, c[2] + r))
            ax.set_box_aspect((1, 1, 1))
        else:
            label += ": no surface"
        ax.set_title(label, fontsize=9)
        ax.set(xlabel="x", ylabel="y", zlabel="z")
    fig.tight_layout()
    return _save(fig, out)


def _show(img: np.ndarray) -> np.ndarray:
    img = np.clip(img, 0.0, 1.0)
    return img[..., 0] if img.shape[-1] == 1 else img[..., :3]


def image_error(pred: np.ndarray, target: np.ndarray | None, out: Path, *, step: int = 1) -> Path:
    """Prediction, target and a per-pixel error heatmap (mean |error| over channels)."""
    plt = _pyplot()
    panels = 1 if target is None else 3
    h, w = pred.shape[:2]
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.2 * h / max(w, 1) + 0.6), squeeze=False)
    axes = axes[0]
    cmap = "gray" if pred.shape[-1] == 1 else None
    axes[0].imshow(_show(pred), cmap=cmap, vmin=0, vmax=1)
    axes[0].set_title("decoded" + (f" (1:{step})" if step > 1 else ""))
    if target is not None:
        axes[1].imshow(_show(target), cmap=cmap, vmin=0, vmax=1)
        axes[1].set_title("target")
        err = np.abs(pred - target).mean(axis=-1)
        im = axes[2].imshow(err, cmap="inferno")
        axes[2].set_title("|error|")
        fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_axis_off()
    return _save(fig, out)


def audio_error(pred: np.ndarray, target: np.ndarray | None, out: Path, *, sample_rate: float,
                excerpt: tuple[np.ndarray, np.ndarray | None] | None = None, excerpt_rate: float | None = None,
                snr: float | None = None) -> Path:
    """Waveform of target and fit, the error, and spectrograms of target and fit.

    ``pred``/``target``: ``(n, channels)`` on the [-1, 1] scale at ``sample_rate`` (a
    strided preview of a long signal); the first channel is drawn. ``excerpt``: a
    contiguous stretch at the full rate ``excerpt_rate`` for the spectrograms (default:
    the preview itself, which is only alias-free when it is not strided).
    """
    plt = _pyplot()
    t = np.arange(pred.shape[0]) / float(sample_rate)
    spec_p, spec_t = excerpt if excerpt is not None else (pred, target)
    rate = float(excerpt_rate or sample_rate)
    ncols = 1 if spec_t is None else 2
    rows = 3 if target is not None else 2
    fig = plt.figure(figsize=(11, 2.4 * rows + 0.8))
    gs = fig.add_gridspec(rows, ncols, height_ratios=[1.0] * (rows - 1) + [1.4])
    ax = fig.add_subplot(gs[0, :])
    if target is not None:
        ax.plot(t, target[:, 0], lw=0.4, color="0.35", label="target")
    ax.plot(t, pred[:, 0], lw=0.4, alpha=0.75, color="C1", label="fit")
    title = "waveform" + ("" if snr is None else f" (SNR {snr:.1f} dB)")
    ax.set(ylabel="amplitude [-1, 1]", xlabel="seconds", title=title)
    ax.legend(loc="upper right")
    if target is not None:
        ax_e = fig.add_subplot(gs[1, :], sharex=ax)
        ax_e.plot(t, pred[:, 0] - target[:, 0], lw=0.4, color="C3")
        ax_e.set(ylabel="error (fit - target)", xlabel="seconds")
    nfft = 512 if rate <= 24000 else 1024
    spectra = [("fit", spec_p)] if spec_t is None else [("target", spec_t), ("fit", spec_p)]
    for i, (name, sig) in enumerate(spectra):
        a = fig.add_subplot(gs[rows - 1, i])
        x = np.asarray(sig[:, 0], dtype=np.float64)
        if len(x) >= nfft:
            a.specgram(x, NFFT=nfft, Fs=rate, noverlap=nfft * 3 // 4, cmap="magma", vmin=-140, vmax=-20)
        a.set(title=f"spectrogram, {name} (first {len(x) / rate:.1f} s)", xlabel="seconds", ylabel="Hz")
    fig.tight_layout()
    return _save(fig, out)


def sdf_slice(pred: np.ndarray, target: np.ndarray | None, out: Path, *, index: int) -> Path:
    """A mid-slice of the predicted (and true) SDF with its zero contour."""
    plt = _pyplot()
    panels = [("decoded", pred)] + ([] if target is None else [("target", target)])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    lim = float(np.max(np.abs(np.concatenate([p.ravel() for _, p in panels])))) or 1.0
    for ax, (title, sdf) in zip(axes[0], panels):
        im = ax.imshow(sdf, cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
        if sdf.min() < 0 < sdf.max():
            ax.contour(sdf, levels=[0.0], colors="k", linewidths=1.0)
        if target is not None and sdf is pred and target.min() < 0 < target.max():
            ax.contour(target, levels=[0.0], colors="lime", linewidths=0.8, linestyles="--")
        ax.set_title(f"{title}, slice {index}")
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, out)
