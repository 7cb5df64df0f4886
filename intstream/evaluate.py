"""eval: score fitted weights against their store and/or decode them, streaming.

One pass over blocks of the grid: each block's coordinates go through the network,
its targets are read from the store (one block ahead, in a background thread, so reads
overlap the forward pass), the per-block metric kernels of `intstream.metrics`
accumulate, and a decode writer (`intstream.decode`) consumes the same predictions.
Memory is a few blocks whatever the signal size; nothing is ever gathered whole
(except what a format needs: a PNG image, the meshes for PLY/OBJ and Chamfer).

A plain chunk loop with one block of prefetch, rather than a Dask graph: the network
forward is the bottleneck by three orders of magnitude over the Zarr reads, it
already uses every core through torch, and a loop keeps the writer's row-major order
and the memory bound obvious.

The blocks are the store's chunks, or the decode writer's blocks (TIFF tiles, audio
blocks) when decoding at the store's shape, so one forward pass serves both. Images
scored for SSIM are predicted with a halo of ``win_size // 2`` pixels around each
block (see `intstream.metrics.ssim_halo`); SDF grids go in slabs of whole planes so that
marching cubes can carry one plane between slabs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import InputError
from .plan import predict_batch
from .metrics import (
    SSIM_WIN,
    ErrorSums,
    SpectralDistance,
    audio_full_scale,
    chamfer_distance,
    iou_from_counts,
    occupancy_counts,
    ssim_block_sums,
)
from .normalize import axis_coords
from .store import SignalStore, block_slices, open_store, store_exists

__all__ = ["METRICS", "DEFAULT_METRICS", "resolve_metrics", "check_store", "evaluate", "score"]

METRICS = {
    "image": ("psnr", "ssim"),
    "audio": ("snr", "psnr", "lsd", "pesq", "stoi"),
    "sdf": ("iou", "chamfer"),
    "array": ("psnr",),
}
# Audio: SNR is the headline (a PSNR near 30 dB can hide a flat line at the mean); PSNR
# the paper's way (data range 2 on [-1, 1]); LSD. PESQ/STOI (optional packages, whole
# signal in memory, seconds per clip) only when asked for (``--metrics all``).
DEFAULT_METRICS = {"image": ("psnr", "ssim"), "audio": ("snr", "psnr", "lsd"), "sdf": ("iou",), "array": ("psnr",)}
# Below this SNR (dB) an audio fit is near-constant: eval warns.
NEAR_CONSTANT_SNR = 1.0
# PESQ/STOI hold both signals in memory: at most this many seconds (per channel).
SPEECH_MAX_SECONDS = 600.0
AUDIO_HELP = "README.md § Audio"
# Plots decode at most this many pixels on the long side / audio points.
PLOT_MAX_SIDE = 1024
PLOT_MAX_POINTS = 200_000


def resolve_metrics(kind: str, requested: str | list | tuple | None) -> tuple[str, ...]:
    """The metrics to compute: ``None``/``"default"`` -> the kind's defaults; ``"all"``; ``"none"``."""
    if requested is None or requested == "default":
        return DEFAULT_METRICS[kind]
    names = requested.split(",") if isinstance(requested, str) else list(requested)
    names = [n.strip().lower() for part in names for n in str(part).split(",") if n.strip()]
    if names == ["none"]:
        return ()
    if names == ["all"]:
        return METRICS[kind]
    bad = [n for n in names if n not in METRICS[kind]]
    if bad:
        raise InputError(None, f"--metrics {','.join(bad)} not available for {kind} signals "
                               f"(available: {', '.join(METRICS[kind])})")
    return tuple(dict.fromkeys(names))


def check_store(weights, store: SignalStore) -> None:
    """Refuse a store that is not the signal the weights were fitted to (InputError)."""
    problems = []
    if store.kind != weights.kind:
        problems.append(f"kind {store.kind} != {weights.kind}")
    if store.shape != weights.shape:
        problems.append(f"shape {list(store.shape)} != {list(weights.shape)}")
    if store.channels != weights.channels:
        problems.append(f"channels {store.channels} != {weights.channels}")
    mine, theirs = (store.meta.get("source") or {}), (weights.signal.get("source") or {})
    if mine.get("sha256") and theirs.get("sha256") and mine["sha256"] != theirs["sha256"]:
        problems.append(f"source checksum differs ({mine.get('name')} vs {theirs.get('name')})")
    if store.meta.get("normalisation") != weights.signal.get("normalisation") and not problems:
        problems.append("normalisation differs")
    if problems:
        raise InputError(store.path, f"store does not match the weights {weights.path.name}: {'; '.join(problems)}")


class _Scorer:
    """Accumulates the requested metrics over blocks (pure kernels from `metrics`)."""

    def __init__(self, store: SignalStore, metrics: tuple[str, ...]):
        self.store, self.metrics = store, metrics
        self.norm = store.norm
        self.float_norm = dataclasses.replace(self.norm, dtype="float64")  # inverse without rounding
        self.err = ErrorSums()
        self.err_q = ErrorSums()
        self.err_v = ErrorSums()
        self.ssim_sums, self.ssim_count = 0.0, 0
        self.inter = self.union = 0
        self.meshers = None
        self.lsd = SpectralDistance() if "lsd" in metrics else None
        self.full_scale = audio_full_scale(self.norm.dtype) if store.kind == "audio" else 1.0
        self.speech, self.speech_skipped = None, {}
        if store.kind == "audio" and ("pesq" in metrics or "stoi" in metrics):
            rate = float(store.meta.get("sample_rate") or 0)
            if rate and store.shape[0] / rate <= SPEECH_MAX_SECONDS:
                self.speech = ([], [])
            else:
                why = f"longer than {SPEECH_MAX_SECONDS:.0f} s (needs the whole signal in memory)"
                self.speech_skipped = {m: why for m in ("pesq", "stoi") if m in metrics}
        if "chamfer" in metrics:
            from .metrics import SlabMesher, sdf_geometry

            origin, spacing = sdf_geometry(store.meta, store.shape)
            self.meshers = (SlabMesher(origin, spacing), SlabMesher(origin, spacing))

    @property
    def halo(self) -> int:
        return (SSIM_WIN - 1) // 2 if "ssim" in self.metrics else 0

    def add(self, block, region, pred_r: np.ndarray, values_r: np.ndarray) -> np.ndarray:
        """Score one block; ``*_r`` cover ``region`` (the block plus halo). Returns the block's predictions."""
        inner = tuple(slice(b.start - r.start, b.stop - r.start) for b, r in zip(block, region))
        pred, values = pred_r[inner], values_r[inner]
        target = self.norm.targets(values)
        kind = self.store.kind
        if kind in ("image", "audio", "array"):
            self.err.add(pred, target)
        if kind == "image":
            q_r = self.norm.targets(self.norm.inverse(pred_r))  # the decoded (e.g. 8-bit) output
            self.err_q.add(q_r[inner], target)
            if "ssim" in self.metrics:
                r = self.halo
                core = []
                for b, reg, n in zip(block, region, self.store.shape):
                    lo, hi = max(b.start, r), min(b.stop, n - r)
                    core.append(slice(lo - reg.start, max(hi, lo) - reg.start))
                sums, count = ssim_block_sums(self.norm.to_unit(q_r), self.norm.to_unit(self.norm.targets(values_r)),
                                               tuple(core), data_range=1.0)
                self.ssim_sums = self.ssim_sums + sums
                self.ssim_count += count
        if kind == "audio":
            # On the [-1, 1] scale the paper uses (x / 32768 for 16-bit PCM), in float64.
            wave = self.float_norm.inverse(pred) / self.full_scale
            ref = values.astype(np.float64) / self.full_scale
            self.err_v.add(wave, ref)
            if self.lsd is not None:
                self.lsd.add(wave, ref)
            if self.speech is not None:
                self.speech[0].append(wave.astype(np.float32))
                self.speech[1].append(ref.astype(np.float32))
        if kind == "sdf":
            i, u = occupancy_counts(pred[..., 0], target[..., 0])
            self.inter += i
            self.union += u
            if self.meshers is not None:
                self.meshers[0].add(block[0].start, pred[..., 0])
                self.meshers[1].add(block[0].start, target[..., 0])
        return pred

    def result(self) -> dict:
        kind, out = self.store.kind, {}
        if kind == "audio":
            return self._audio_result()
        if "psnr" in self.metrics:
            out["psnr"] = _num(self.err.psnr(self.norm.span))  # on the signal's [0, 1] scale
            out["mse"] = _num(self.err.mse / self.norm.span**2)  # on the [0, 1] scale too
            if kind == "image":
                out["psnr_quantized"] = _num(self.err_q.psnr(self.norm.span))
                out["quantized_dtype"] = self.norm.dtype
        if "ssim" in self.metrics:
            out["ssim"] = _num(float(np.mean(self.ssim_sums / self.ssim_count))) if self.ssim_count else None
        if "snr" in self.metrics:
            out["snr"] = _num(self.err_v.snr())
        if kind == "sdf":
            if "iou" in self.metrics:
                out["iou"] = _num(iou_from_counts(self.inter, self.union))
            if self.meshers is not None:
                (va, fa), (vb, fb) = self.meshers[0].mesh(), self.meshers[1].mesh()
                out["chamfer"] = _num(chamfer_distance(va, fa, vb, fb))
                out["chamfer_units"] = "normalised box"
        return out

    def _audio_result(self) -> dict:
        out = {}
        if "snr" in self.metrics:
            out["snr"] = _num(self.err_v.snr())
        if "psnr" in self.metrics:
            out["psnr"] = _num(self.err_v.psnr(2.0))  # the paper's: data range 2 on [-1, 1]
            out["psnr_range"] = "[-1, 1], data range 2"
            out["mse"] = _num(self.err_v.mse)
        if self.lsd is not None:
            out["lsd"] = _num(self.lsd.result())
        wanted = tuple(m for m in ("pesq", "stoi") if m in self.metrics)
        skipped = dict(self.speech_skipped)
        if self.speech is not None and wanted:
            from .metrics import speech_scores

            pred, ref = np.concatenate(self.speech[0]), np.concatenate(self.speech[1])
            scores, more = speech_scores(pred, ref, int(self.store.meta["sample_rate"]), wanted)
            skipped.update(more)
            out.update({k: _num(v) for k, v in scores.items()})
        for m in wanted:
            out.setdefault(m, None)
        if skipped:
            out["skipped"] = skipped
        return out


def _num(x: float | None):
    """JSON-safe numbers: inf/nan become null (a lossless PSNR is null beside an mse of 0)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _grow(block, shape, r):
    return tuple(slice(max(s.start - r, 0), min(s.stop + r, n)) for s, n in zip(block, shape))


def score(
    model,
    store: SignalStore,
    metrics: tuple[str, ...],
    blocks: list[tuple[slice, ...]],
    *,
    batch: int = 65536,
    writer=None,
    progress: bool | None = None,
) -> dict:
    """Stream ``blocks`` of ``store`` through ``model``; return the metrics dict.

    With a ``writer`` (see `intstream.decode`), the same predictions are decoded; the
    blocks must then be in the writer's order.
    """
    import torch

    from .models import predict
    from .normalize import block_coords
    from .progress import Progress

    scorer = _Scorer(store, metrics)
    shape, extent, halo = store.shape, store.norm.extent, scorer.halo
    regions = [_grow(b, shape, halo) for b in blocks]

    def gen():
        with ThreadPoolExecutor(max_workers=1) as pool, Progress(len(blocks), "eval", enabled=progress, unit="block") as bar:
            # One block of read-ahead: reads overlap the forward pass, memory stays bounded.
            pending = pool.submit(store.read, regions[0]) if blocks else None
            for i, (block, region) in enumerate(zip(blocks, regions)):
                values = pending.result()
                pending = pool.submit(store.read, regions[i + 1]) if i + 1 < len(blocks) else None
                coords = torch.from_numpy(block_coords(shape, extent, region))
                pred = predict(model, coords, batch=batch).cpu().numpy().reshape(values.shape[:-1] + (-1,))
                yield block, scorer.add(block, region, pred, values)
                bar.update()

    if writer is not None:
        writer.consume(gen())
    else:
        for _ in gen():
            pass
    return scorer.result()


def _store_blocks(store: SignalStore) -> list[tuple[slice, ...]]:
    from .decode import sdf_slab

    if store.kind == "sdf":
        return list(block_slices(store.shape, sdf_slab(store.shape)))
    return store.chunk_slices()


def _open_store(weights, store_arg) -> SignalStore | None:
    if store_arg is not None:
        store = open_store(store_arg)
    elif weights.store_path and store_exists(weights.store_path):  # a path or a store URL
        store = open_store(weights.store_path)
    else:
        return None
    check_store(weights, store)
    return store


def evaluate(
    source: str | os.PathLike,
    *,
    store: str | os.PathLike | None = None,
    metrics: str | tuple | None = None,
    decode: str | os.PathLike | None = None,
    shape: tuple[int, ...] | str | None = None,
    device: str = "auto",
    plot: str | os.PathLike | None = None,
    overwrite: bool = False,
    batch: int = 65536,
    progress: bool | None = None,
) -> dict:
    """Score weights (file, run dir or checkpoint) against a store and/or decode them.

    Parameters
    ----------
    source
        A ``.safetensors`` weights file, a run directory or a ``checkpoint.pt``.
    store
        The store to score against; default: the store recorded at fit time, if it
        still exists. A store that does not match the weights is an `InputError`.
    metrics
        Comma list or sequence (see `METRICS`); ``None`` for the kind's defaults,
        ``"all"`` or ``"none"``.
    decode
        Output file (``.png .tif .wav .flac .ply .obj .zarr``), or None.
    shape
        Decode at another grid shape (the store's metrics are still on its own grid).
    device, batch
        Where the network runs and samples per forward.
    plot
        Folder for PNG plots (needs matplotlib).
    overwrite
        Replace existing outputs.

    Returns
    -------
    dict
        The manifest: weights / run dir, store, metrics, decoded path, plots, seconds,
        and the scoring throughput in MB/s of raw signal.
    """
    from .decode import (check_decode_output, open_writer, output_location, parse_shape, predict_blocks,
                         refuse_inside_inputs, resolve_device)
    from .export import load_source

    t0 = time.perf_counter()
    weights = load_source(source)
    kind = weights.kind
    names = resolve_metrics(kind, metrics)
    dec_shape = parse_shape(shape, len(weights.shape)) if isinstance(shape, str) else (
        tuple(int(n) for n in shape) if shape is not None else None)
    if dec_shape is not None and decode is None:
        raise InputError(None, "--shape needs --decode (metrics are computed on the store's own grid)")
    dec_shape = dec_shape or weights.shape
    if decode is not None:  # refused up front: wrong format, an input's path, too big for memory or disk
        check_decode_output(decode, weights, dec_shape, overwrite=overwrite, inputs=(store,) if store else ())
    st = _open_store(weights, store)
    if st is None:
        if metrics not in (None, "default", "none"):
            where = weights.store_path or "(none recorded)"
            raise InputError(weights.path, f"no store to score against: the recorded store {where} is gone; pass --store")
        names = ()
        if decode is None and plot is None:
            raise InputError(weights.path, f"nothing to do: the recorded store {weights.store_path} is gone "
                                           "(pass --store to score, or --decode to decode)")
        logging.getLogger("intstream.eval").warning(f"store {weights.store_path} not found; decoding without metrics")
    plot_dir = None
    if plot is not None:  # after the checks above: a refused eval leaves no empty plot folder
        from .plots import check_plot_dir

        refuse_inside_inputs(plot, weights, (store,) if store else ())
        plot_dir = check_plot_dir(plot, overwrite=overwrite)
    dev = resolve_device(device)
    model = weights.model(dev)
    batch = predict_batch(weights.model_config, weights.state, batch)  # the memory plan, DESIGN §10

    result, decoded, t_score = {}, None, None
    if st is not None and names:
        t1 = time.perf_counter()
        if decode is not None and dec_shape == st.shape:
            with open_writer(decode, weights, dec_shape, overwrite=overwrite) as writer:
                # SDF goes in slabs (meshing carries a plane); any writer takes any block.
                blocks = _store_blocks(st) if kind == "sdf" else list(block_slices(st.shape, writer.block))
                result = score(model, st, names, blocks, batch=batch, writer=writer, progress=progress)
            decoded = output_location(decode)  # a path or a store URL
        else:
            result = score(model, st, names, _store_blocks(st), batch=batch, progress=progress)
        t_score = time.perf_counter() - t1
        _warn_near_constant(kind, result)
    if decode is not None and decoded is None:
        with open_writer(decode, weights, dec_shape, overwrite=overwrite) as writer:
            writer.consume(predict_blocks(model, dec_shape, weights.norm.extent,
                                          block_slices(dec_shape, writer.block), batch=batch))
        decoded = output_location(decode)
    plots = None
    if plot_dir is not None:
        plots = _plots(plot_dir, weights, model, st, batch=batch)
    manifest = {
        "stage": "eval",
        "weights": str(weights.path) if weights.path.suffix != ".pt" else None,
        "run_dir": weights.run_dir,
        "store": None if st is None else str(st.path),
        "kind": kind,
        "metrics": result,
        "decoded": decoded,
        "decoded_shape": None if decoded is None else list(dec_shape),
        "plots": plots,
        "device": dev,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if t_score:
        manifest["score_seconds"] = round(t_score, 3)
        manifest["mb_per_s"] = round(st.nbytes / 1e6 / t_score, 3)
    if weights.summary:
        manifest["train_psnr"] = weights.summary.get("train_psnr")
    if manifest["weights"] is not None and weights.path.is_file():
        # The rate beside the distortion, under export's names (one name per figure across stages).
        nbytes = weights.path.stat().st_size
        manifest["bytes"] = nbytes
        manifest["bits_per_sample"] = round(8 * nbytes / math.prod(weights.shape), 6)
    return manifest


def _warn_near_constant(kind: str, result: dict) -> None:
    """Say so on stderr when an audio fit is a flat line (SNR below `NEAR_CONSTANT_SNR`)."""
    snr = result.get("snr")
    if kind == "audio" and isinstance(snr, float) and snr < NEAR_CONSTANT_SNR:
        print(f"intstream eval: warning: SNR {snr:.2f} dB: the model predicts the mean; see {AUDIO_HELP} "
              "(the audio defaults, or more steps / --time-budget)", file=sys.stderr)
    for name, why in (result.get("skipped") or {}).items():
        print(f"intstream eval: {name} skipped: {why}", file=sys.stderr)


# -- plots ----------------------------------------------------------------------------

# Full-resolution crops of the worst image regions (pixels a side), and the mesh plot's grid.
WORST_CROP = 96
PLOT_MESH_SIDE = 64


def _predict_at(model, shape, extent, index_axes, batch):
    """Predictions on the sub-grid given by per-axis index arrays (strided previews)."""
    import torch

    from .models import predict

    axes = [axis_coords(n, e)[idx] for n, e, idx in zip(shape, extent, index_axes)]
    mesh = np.meshgrid(*axes, indexing="ij")
    coords = np.stack([m.reshape(-1) for m in mesh], axis=1)
    pred = predict(model, torch.from_numpy(coords), batch=batch).cpu().numpy()
    return pred.reshape(tuple(len(i) for i in index_axes) + (-1,))


def _plots(out_dir: Path, weights, model, store: SignalStore | None, *, batch: int) -> list[str]:
    from . import plots

    made = []
    log = Path(weights.run_dir) / "log.jsonl" if weights.run_dir else None
    if log is not None and log.is_file():
        made.append(plots.training_curves(log, out_dir / "training.png"))
    shape, extent, norm = weights.shape, weights.norm.extent, weights.norm
    kind = weights.kind
    if kind in ("image", "array") and len(shape) == 2:
        step = max(1, math.ceil(max(shape) / PLOT_MAX_SIDE))
        idx = [np.arange(0, n, step) for n in shape]
        # Shown on the [0, 1] scale whatever the target mapping (signed targets would clip).
        pred = norm.to_unit(_predict_at(model, shape, extent, idx, batch))
        target = None if store is None else norm.to_unit(norm.targets(store.array[::step, ::step, :]))
        made.append(plots.image_error(pred, target, out_dir / "error.png", step=step))
        if target is not None:
            # The worst regions of the strided error map, decoded and read at full resolution.
            crops = []
            size = min(WORST_CROP, *shape)
            for r0, c0 in plots.worst_regions(np.abs(pred - target).mean(axis=-1), step, shape, size=size):
                rows, cols = np.arange(r0, min(r0 + size, shape[0])), np.arange(c0, min(c0 + size, shape[1]))
                p = norm.to_unit(_predict_at(model, shape, extent, [rows, cols], batch))
                t = norm.to_unit(norm.targets(store.array[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1, :]))
                crops.append((p, t, (r0, c0)))
            made.append(plots.worst_crops(crops, out_dir / "worst_crops.png"))
    elif kind == "audio":
        # On the [-1, 1] scale; the waveform strided over the whole signal, the
        # spectrograms over a contiguous stretch at the full rate (striding would alias).
        fnorm = dataclasses.replace(norm, dtype="float64")
        fs = audio_full_scale(norm.dtype)
        wave = lambda t: fnorm.inverse(t) / fs  # noqa: E731
        step = max(1, math.ceil(shape[0] / PLOT_MAX_POINTS))
        idx = [np.arange(0, shape[0], step)]
        pred = wave(_predict_at(model, shape, extent, idx, batch))
        target = None if store is None else store.array[::step, :].astype(np.float64) / fs
        rate = float(weights.signal.get("sample_rate") or 1.0)
        excerpt = None
        if step > 1:
            m = min(shape[0], PLOT_MAX_POINTS)
            ex_t = None if store is None else store.array[:m, :].astype(np.float64) / fs
            excerpt = (wave(_predict_at(model, shape, extent, [np.arange(m)], batch)), ex_t)
        snr = None
        if target is not None:
            err = float(np.sum((pred - target) ** 2))
            snr = 10 * math.log10(float(np.sum(target**2)) / err) if err > 0 else None
        made.append(plots.audio_error(pred, target, out_dir / "waveform.png", sample_rate=rate / step,
                                      excerpt=excerpt, excerpt_rate=rate, snr=snr))
    elif kind == "sdf" and len(shape) == 3:
        mid = shape[0] // 2
        step = max(1, math.ceil(max(shape[1:]) / PLOT_MAX_SIDE))
        idx = [np.array([mid]), np.arange(0, shape[1], step), np.arange(0, shape[2], step)]
        pred = _predict_at(model, shape, extent, idx, batch)[0, ..., 0]
        target = None if store is None else norm.targets(store.array[mid, ::step, ::step, 0])
        made.append(plots.sdf_slice(pred, target, out_dir / "sdf_slice.png", index=mid))
        made.append(_mesh_plot(plots, out_dir / "mesh.png", weights, model, store, batch=batch))
    teacher = _teacher_maps(weights)
    if teacher:
        made.append(plots.teacher_map(teacher, out_dir / "teacher.png"))
    return [str(p) for p in made]


def _mesh_plot(plots, out: Path, weights, model, store: SignalStore | None, *, batch: int) -> Path:
    """Marching cubes of the decoded (and true) SDF on a grid of at most `PLOT_MESH_SIDE`^3."""
    from .metrics import marching_cubes_block, sdf_geometry

    shape = weights.shape
    step = max(1, math.ceil(max(shape) / PLOT_MESH_SIDE))
    idx = [np.arange(0, n, step) for n in shape]
    origin, spacing = sdf_geometry(weights.signal, shape)
    spacing = spacing * step
    meshes = [("decoded", *marching_cubes_block(_predict_at(model, shape, weights.norm.extent, idx, batch)[..., 0],
                                                  origin, spacing))]
    if store is not None:
        target = weights.norm.targets(store.array[::step, ::step, ::step, 0])
        meshes.append(("target", *marching_cubes_block(target, origin, spacing)))
    grid = tuple(len(i) for i in idx)
    return plots.sdf_mesh(meshes, out, grid=grid)


def _teacher_maps(weights) -> list[tuple[str, np.ndarray]]:
    """The fit's map of where its teacher sampled (`intstream.teach.maps`), as 2-D panels."""
    from .checkpoint import TEACHER_MAP_NAME

    path = Path(weights.run_dir) / TEACHER_MAP_NAME if weights.run_dir else None
    if path is None or not path.is_file():
        return []
    try:
        with np.load(path) as z:
            found = {k: np.asarray(z[k], dtype=np.float32) for k in z.files}
    except (OSError, ValueError):  # unreadable: no teacher plot, not a failed eval
        logging.getLogger("intstream.eval").warning(f"{path} is unreadable; no teacher.png")
        return []
    titles = {"error": "teacher's error estimate (mean |error| per sample)",
              "selected": "samples trained on (count over the run)"}
    panels = []
    for key, title in titles.items():
        m = found.get(key)
        if m is None or m.ndim not in (1, 2, 3) or m.size == 0:
            continue
        if m.ndim == 3:
            m, title = m[m.shape[0] // 2], f"{title}, middle slice"
        panels.append((title, m))
    return panels
