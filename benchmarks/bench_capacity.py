"""Capacity that grows with the signal (DESIGN §9, issue 11): the tiled SIREN bank vs one SIREN.

Sections (each row measured in this run; wall times under whatever load the machine
has, recorded with ``uptime`` beside every table):

- ``defaults``: quick sweeps of the tiled model's knobs (lr, tile edge, depth, overlap,
  first omega) on a 256² Kodak crop mosaic, a fixed number of steps with uniform 25%
  batches and one torch thread; the chosen values are `intstream.models.sizing.TILED_DEFAULTS`.
- ``equal``: tiled vs single at equal parameters and equal training time on a 1024²
  mosaic of Kodak crops, through `intstream.fit.fit` with the default teacher; PSNR by
  `intstream.evaluate.evaluate` on the exported float16 weights; the seam check (PSNR
  over the 2-sample band along tile borders vs the interior) on the tiled model.
- ``rate``: ``--capacity`` sweep of the tiled model (fixed time each) -> bytes (float16,
  int8), bpp and PSNR, beside JPEG and WebP (Pillow) at the same bytes.

    python benchmarks/bench_capacity.py                       # every section, results/capacity.md
    python benchmarks/bench_capacity.py --section equal --time-budget 180
    python benchmarks/bench_capacity.py --smoke               # seconds, for CI
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import kodak_mosaic, markdown, machine, progress, results_path  # noqa: E402


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg()) + f" ({os.cpu_count()} cores)"


# -- defaults: a tiny training loop, the model only -------------------------------------


def sweep_loop(im: np.ndarray, kw: dict, steps: int, lr: float, frac: float = 0.25, seed: int = 0) -> dict:
    import torch

    from intstream.models import ModelConfig, build_model, count_params
    from intstream.normalize import block_coords

    torch.manual_seed(seed)
    H, W, C = im.shape
    model = build_model(ModelConfig(**kw))
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, 1e-6)
    x = torch.from_numpy(block_coords((H, W), (1.0, 1.0), (slice(0, H), slice(0, W))))
    y = torch.from_numpy(im.reshape(-1, C))
    n, g = x.shape[0], torch.Generator().manual_seed(seed)
    t0 = time.process_time()
    for _ in range(steps):
        idx = torch.randint(0, n, (int(frac * n),), generator=g)
        opt.zero_grad()
        (model(x[idx]) - y[idx]).square().mean().backward()
        opt.step()
        sched.step()
    cpu = time.process_time() - t0
    with torch.no_grad():
        mse = float((model(x) - y).square().mean())
    return {"psnr": round(10 * math.log10(1 / mse), 2), "params": count_params(model), "cpu_s": round(cpu, 1)}


def section_defaults(work: Path, args) -> list[dict]:
    import torch

    from intstream.models.sizing import TILED_DEFAULTS, model_kwargs

    torch.set_num_threads(1)
    png = kodak_mosaic(args.sweep_edge, work / "sweep.png", tile=args.sweep_edge // 2)
    im = np.asarray(Image.open(png)).astype(np.float32) / 255
    d = TILED_DEFAULTS["image"]
    base = {"tile": d["tile"], "depth": d["depth"], "overlap": d["overlap"], "capacity": d["capacity"], "lr": d["lr"],
            "first_omega0": None}
    grid = {
        "lr": [1e-3, 3e-3, 5e-3],
        "tile": [32, 64, 128],
        "depth": [3, 4, 5],
        "overlap": [1.0, 2.0, 4.0],
        "first_omega0": [10.0, 30.0, 60.0],
    }
    if args.smoke:
        grid = {"lr": [3e-3], "tile": [32]}
    rows = []
    for knob, values in grid.items():
        for v in values:
            p = {**base, knob: v}
            kw = model_kwargs("image", im.shape[:2], 3, (1.0, 1.0), model="tiled", capacity=p["capacity"],
                              tile=p["tile"], overlap=p["overlap"], depth=p["depth"], first_omega0=p["first_omega0"])
            r = sweep_loop(im, kw, args.sweep_steps, p["lr"])
            rows.append({"knob": knob, "value": v, "width": kw["width"], **r})
            progress(f"defaults {knob}={v}: {rows[-1]}")
    single = model_kwargs("image", im.shape[:2], 3, (1.0, 1.0), model="single", capacity=base["capacity"])
    for lr in ([1e-3] if args.smoke else [3e-4, 1e-3]):
        r = sweep_loop(im, single, args.sweep_steps, lr)
        rows.append({"knob": "single SIREN lr", "value": lr, "width": single["width"], **r})
        progress(f"defaults single lr={lr}: {rows[-1]}")
    return rows


# -- equal params, equal time -----------------------------------------------------------


def _fit_eval(store: str, run: Path, cfg_kw: dict) -> dict:
    from intstream.evaluate import evaluate
    from intstream.export import export_weights
    from intstream.fit import FitConfig, fit

    m = fit(store, run, FitConfig(**cfg_kw), overwrite=True, progress=False)
    out = {"steps": m["steps"], "train_s": m["train_seconds"], "params": m["params"]}
    for dtype in ("float16", "int8"):
        w = run.parent / f"{run.name}_{dtype}.safetensors"
        man = export_weights(run, w, dtype=dtype, overwrite=True)
        ev = evaluate(w, metrics="psnr", device="cpu")
        out[f"psnr_{dtype}"] = round(ev["metrics"]["psnr"], 2)
        out[f"bytes_{dtype}"] = man["bytes"]
        out[f"bpp_{dtype}"] = round(man["bits_per_sample"], 3)
    out["weights"] = str(run.parent / f"{run.name}_float16.safetensors")
    return out


def seams(weights: str, store_path: str) -> dict:
    """PSNR over the 2-sample band each side of every tile border vs over the rest."""
    import torch

    from intstream.export import load_weights
    from intstream.models import predict
    from intstream.store import open_store

    w = load_weights(weights)
    model = w.model()
    store = open_store(store_path)
    coords, targets = store.load_all()
    pred = predict(model, torch.from_numpy(coords)).numpy()
    err = ((pred - targets) ** 2).mean(1).reshape(store.shape)
    masks = []
    for a, n in enumerate(store.shape):
        q = np.arange(n) + 0.5
        L = model.lengths[a]
        dist = np.abs(q - np.round(q / L) * L)
        near = (dist < 2) & (np.round(q / L) > 0) & (np.round(q / L) < model.counts[a])
        masks.append(near)
    band = masks[0][:, None] | masks[1][None, :]
    p = lambda e: round(10 * math.log10(1 / float(e.mean())), 2)  # noqa: E731
    return {"psnr_band": p(err[band]), "psnr_interior": p(err[~band]), "band_share": round(float(band.mean()), 3)}


def section_equal(work: Path, args) -> tuple[list[dict], list[dict]]:
    from intstream.ingest import ingest

    png = kodak_mosaic(args.edge, work / f"mosaic_{args.edge}.png")
    store = ingest(png, work / "mosaic.zarr", overwrite=True, progress=False)["store"]
    rows = []
    cap = args.capacity
    for model in ("tiled", "single"):
        kw = {"model": model, "capacity": cap, "time_budget": args.time_budget, "steps": 100000,
              "log_every": 10**6, "seed": 0}
        r = _fit_eval(store, work / f"eq_{model}", kw)
        rows.append({"model": model, "capacity": cap, **{k: v for k, v in r.items() if k != "weights"}, "load": load()})
        progress(f"equal {model}: {rows[-1]}")
        if model == "tiled":
            seam = [{"model": "tiled", **seams(r["weights"], store)}]
    return rows, seam


# -- rate / quality --------------------------------------------------------------------------


def _codec_at_bytes(im: np.ndarray, fmt: str, target: int) -> dict:
    """The highest-quality ``fmt`` encoding of ``im`` no larger than ``target`` bytes."""
    best = None
    lo, hi = 1, 100
    while lo <= hi:
        q = (lo + hi) // 2
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, fmt, quality=q)
        if buf.tell() <= target:
            best, lo = (q, buf.getvalue()), q + 1
        else:
            hi = q - 1
    if best is None:
        return {"quality": None, "bytes": None, "psnr": None}
    dec = np.asarray(Image.open(io.BytesIO(best[1])).convert("RGB")).astype(np.float64)
    mse = float(((dec - im.astype(np.float64)) / 255.0).__pow__(2).mean())
    return {"quality": best[0], "bytes": len(best[1]), "psnr": round(10 * math.log10(1 / mse), 2)}


def section_rate(work: Path, args) -> list[dict]:
    from intstream.ingest import ingest

    png = work / f"mosaic_{args.edge}.png"
    if not png.exists():
        kodak_mosaic(args.edge, png)
    store = ingest(png, work / "mosaic.zarr", overwrite=True, progress=False)["store"]
    im = np.asarray(Image.open(png).convert("RGB"))
    rows = []
    for cap in args.rate_capacities:
        r = _fit_eval(store, work / f"rate_{cap}", {"model": "tiled", "capacity": cap, "time_budget": args.rate_time,
                                                    "steps": 100000, "log_every": 10**6, "seed": 0})
        row = {"capacity": cap, "params": r["params"], "steps": r["steps"]}
        for dtype in ("float16", "int8"):
            jpg = _codec_at_bytes(im, "JPEG", r[f"bytes_{dtype}"])
            webp = _codec_at_bytes(im, "WEBP", r[f"bytes_{dtype}"])
            row.update({f"{dtype} bytes": r[f"bytes_{dtype}"], f"{dtype} bpp": r[f"bpp_{dtype}"],
                        f"{dtype} PSNR": r[f"psnr_{dtype}"], f"JPEG@{dtype}": jpg["psnr"], f"WebP@{dtype}": webp["psnr"]})
        rows.append(row)
        progress(f"rate {cap}: {row}")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", action="append", choices=["defaults", "equal", "rate"])
    ap.add_argument("--edge", type=int, default=1024, help="mosaic edge for equal/rate")
    ap.add_argument("--capacity", type=float, default=0.19, help="params per value for equal (0.19: the DESIGN prototype's 590k)")
    ap.add_argument("--time-budget", type=float, default=180.0, help="training seconds per model in equal")
    ap.add_argument("--rate-capacities", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5])
    ap.add_argument("--rate-time", type=float, default=90.0)
    ap.add_argument("--sweep-edge", type=int, default=256)
    ap.add_argument("--sweep-steps", type=int, default=300)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.smoke:
        args.edge, args.time_budget, args.rate_time, args.rate_capacities = 128, 3.0, 2.0, [0.2]
        args.sweep_edge, args.sweep_steps = 64, 5
    sections = args.section or ["defaults", "equal", "rate"]
    out = results_path(args.out, "capacity", args.smoke)
    parts = [f"## Capacity: the tiled SIREN bank vs one SIREN\n\n{time.strftime('%Y-%m-%d %H:%M')} on {machine()}; "
             f"start {load()}\n\nCommand: `python benchmarks/bench_capacity.py {' '.join(argv or sys.argv[1:])}`\n"]
    with tempfile.TemporaryDirectory(prefix="bench_capacity_") as tmp:
        work = Path(tmp)
        if "defaults" in sections:
            rows = section_defaults(work, args)
            parts.append(f"### Defaults sweep ({args.sweep_edge}² Kodak mosaic, {args.sweep_steps} steps, uniform 25% "
                         f"batches, 1 thread; one knob varied from the defaults at a time; CPU seconds)\n\n"
                         + markdown(rows) + f"\n{load()}\n")
        if "equal" in sections:
            rows, seam = section_equal(work, args)
            parts.append(f"### Equal parameters, equal time ({args.edge}² Kodak mosaic, capacity {args.capacity}, "
                         f"{args.time_budget:g} s of training each, default teacher; PSNR by eval)\n\n"
                         + markdown(rows) + "\nSeams (tiled model; band = 2 samples each side of a tile border):\n\n"
                         + markdown(seam) + f"\n{load()}\n")
        if "rate" in sections:
            rows = section_rate(work, args)
            parts.append(f"### Rate / quality ({args.edge}² Kodak mosaic, tiled, {args.rate_time:g} s each; JPEG/WebP "
                         f"by Pillow at the largest quality within the same bytes)\n\n" + markdown(rows) + f"\n{load()}\n")
    text = "\n".join(parts)
    print(text)
    if out is not None:
        out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
