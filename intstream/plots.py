"""Diagnostic plots for ``intstream eval --plot DIR`` (matplotlib, an optional extra).

matplotlib is imported only when a plot is drawn, with the Agg backend (no display),
so ``import intstream`` and the CLI never pay for it. Each function takes plain arrays
(already decoded at a capped resolution by `intstream.evaluate`) and writes one PNG
atomically; it returns the path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .atomic import atomic_output
from .errors import InputError

__all__ = ["PLOT_FILES", "check_plot_dir", "training_curves", "image_error", "audio_error", "sdf_slice"]

PLOT_FILES = ("training.png", "error.png", "waveform.png", "sdf_slice.png")


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


def training_curves(log: Path, out: Path) -> Path:
    """Training PSNR against wall time and against steps, from a run's ``log.jsonl``."""
    plt = _pyplot()
    rows = []
    for line in Path(log).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: skip it
        if isinstance(row, dict) and row.get("psnr") is not None:
            rows.append(row)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    if rows:
        step = [r["step"] for r in rows]
        psnr = [r["psnr"] for r in rows]
        wall = [r.get("wall", np.nan) for r in rows]
        train = [r.get("train_seconds", np.nan) for r in rows]
        a.plot(wall, psnr, label="wall time")
        a.plot(train, psnr, "--", label="training time")
        a.legend()
        b.plot(step, psnr)
    a.set(xlabel="seconds", ylabel="training PSNR (dB)", title="PSNR vs time")
    b.set(xlabel="step", ylabel="training PSNR (dB)", title="PSNR vs steps")
    for ax in (a, b):
        ax.grid(alpha=0.3)
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


def audio_error(pred: np.ndarray, target: np.ndarray | None, out: Path, *, sample_rate: float) -> Path:
    """Waveform (target and prediction, first channel) and the error, on [0, 1] targets."""
    plt = _pyplot()
    t = np.arange(pred.shape[0]) / float(sample_rate)
    rows = 1 if target is None else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows), sharex=True, squeeze=False)
    axes = axes[:, 0]
    if target is not None:
        axes[0].plot(t, target[:, 0], lw=0.5, label="target")
    axes[0].plot(t, pred[:, 0], lw=0.5, alpha=0.8, label="decoded")
    axes[0].set(ylabel="normalised amplitude")
    axes[0].legend(loc="upper right")
    if target is not None:
        axes[1].plot(t, pred[:, 0] - target[:, 0], lw=0.5, color="C3")
        axes[1].set(ylabel="error")
    axes[-1].set(xlabel="seconds")
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
