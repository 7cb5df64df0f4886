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
- ``growth``: the same mosaic mirror-tiled to 1, 4, 16 and 64 MP, each fitted by the CLI
  forced out of core at one ``--memory-budget`` with the same capacity, ratio and steps
  (so the same passes over the signal): PSNR by eval, time per trained sample and the fit
  process's peak RSS against the size.
- ``rate``: ``--capacity`` sweep of the tiled model (fixed time each, T fitted to it) -> bytes (float16,
  int8), bpp and PSNR, beside JPEG and WebP (Pillow) at the same bytes.

    python benchmarks/bench_capacity.py                       # every section, results/capacity.md
    python benchmarks/bench_capacity.py --section equal --time-budget 180
    python benchmarks/bench_capacity.py --section growth --growth-edges 1024 2048 4096
    python benchmarks/bench_capacity.py --smoke               # seconds, for CI
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MOSAIC_CROP, kodak_mosaic, markdown, machine, progress, results_path  # noqa: E402


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


def seams(weights: str, store_path: str, crop: int = MOSAIC_CROP) -> dict:
    """PSNR over the 2-sample band each side of every tile border vs over the rest.

    The mosaic's crops (``crop``² apart) end on tile borders, and a step between two
    photographs is harder to fit than the photographs: samples within 2 of a crop edge
    are left out of both figures (and reported apart as ``psnr_crop_edges``), so the band
    and the interior hold the same kind of content and their gap is the blend's alone."""
    import torch

    from intstream.export import load_weights
    from intstream.models import predict
    from intstream.store import open_store

    w = load_weights(weights)
    model = w.model()
    store = open_store(store_path)
    coords, targets = store.load_all()
    pred = predict(model, torch.from_numpy(coords)).numpy()
    # on the signal's [0, 1] scale, as eval reports (targets span w.norm.span)
    err = ((pred - targets) ** 2).mean(1).reshape(store.shape) / w.norm.span**2

    def near_lines(periods) -> np.ndarray:  # within 2 samples of an inner multiple of an axis's period
        masks = []
        for n, period in zip(store.shape, periods):
            q = np.arange(n) + 0.5
            k = np.round(q / period)
            masks.append((np.abs(q - k * period) < 2) & (k > 0) & (k < n / period))
        return masks[0][:, None] | masks[1][None, :]

    band, edges = near_lines(model.lengths), near_lines((crop, crop))
    p = lambda e: round(10 * math.log10(1 / float(e.mean())), 2) if e.size else None  # noqa: E731
    return {"psnr_band": p(err[band & ~edges]), "psnr_interior": p(err[~band & ~edges]),
            "psnr_crop_edges": p(err[edges]), "band_share": round(float((band & ~edges).mean()), 3)}


def section_equal(work: Path, args) -> tuple[list[dict], list[dict]]:
    from intstream.ingest import ingest

    png = kodak_mosaic(args.edge, work / f"mosaic_{args.edge}.png")
    store = ingest(png, work / "mosaic.zarr", overwrite=True, progress=False)["store"]
    rows = []
    cap = args.capacity
    for model in ("tiled", "single"):
        # --time-budget alone: fit fits T (and the LR's cosine) to the budget, as a user's run does
        kw = {"model": model, "capacity": cap, "time_budget": args.time_budget, "log_every": 10**6, "seed": 0}
        r = _fit_eval(store, work / f"eq_{model}", kw)
        rows.append({"model": model, "capacity": cap, **{k: v for k, v in r.items() if k != "weights"}, "load": load()})
        progress(f"equal {model}: {rows[-1]}")
        if model == "tiled":
            seam = [{"model": "tiled", **seams(r["weights"], store)}]
    return rows, seam


# -- growth: quality, time per sample and memory as the signal grows ------------------------


def mirrored_mosaic(base: np.ndarray, edge: int, out: Path) -> Path:
    """``base`` (a Kodak crop mosaic) mirror-tiled to ``edge``², as a tiled TIFF: every size
    holds the same content (flipped copies), so a PSNR that falls with size is the model's."""
    import tifffile

    reps = edge // base.shape[0]
    canvas = np.empty((edge, edge, 3), np.uint8)
    b = base.shape[0]
    for r in range(reps):
        for c in range(reps):
            t = base[::-1] if r % 2 else base
            canvas[r * b : (r + 1) * b, c * b : (c + 1) * b] = t[:, ::-1] if c % 2 else t
    tifffile.imwrite(out, canvas, tile=(256, 256), photometric="rgb")
    return out


def section_growth(work: Path, args) -> list[dict]:
    """Each size fitted by the CLI in its own process, forced out of core at one budget,
    the same tiled model per tile, ratio and steps: every tile trains on the same samples
    per step for the same steps, so samples per signal sample are fixed (checked from
    fit's ``samples_trained``)."""
    from _common import intstream_cmd, manifest_of, peak_rss_of

    cli = intstream_cmd()
    base_png = kodak_mosaic(args.growth_edges[0], work / "growth_base.png")
    base = np.asarray(Image.open(base_png).convert("RGB"))
    rows = []
    for edge in args.growth_edges:
        src = mirrored_mosaic(base, edge, work / f"growth_{edge}.tif")
        store, run, w = work / f"growth_{edge}.zarr", work / f"growth_{edge}.run", work / f"growth_{edge}.safetensors"
        peak_rss_of(cli + ["ingest", str(src), "-o", str(store), "--overwrite", "-q"])
        src.unlink()
        sec, rss, proc = peak_rss_of(cli + [
            "fit", str(store), "-o", str(run), "--overwrite", "-q", "--model", "tiled", "--capacity", str(args.growth_capacity),
            "--ratio", str(args.growth_ratio), "--steps", str(args.growth_steps), "--out-of-core",
            "--memory-budget", args.growth_budget, "--log-every", str(args.growth_steps)])
        m = manifest_of(proc)
        plan = json.loads((run / "config.json").read_text())["plan"]
        peak_rss_of(cli + ["export-weights", str(run), "-o", str(w), "--dtype", "float16", "--overwrite", "-q"])
        esec, erss, eproc = peak_rss_of(cli + ["eval", str(w), "--metrics", "psnr", "-q"])
        ev = manifest_of(eproc)
        n = edge * edge
        rows.append({
            "MP": round(n / 2**20, 2), "edge": edge, "params": m["params"], "steps": m["steps"],
            "samples/step": m["samples_trained"] // max(1, m["steps"]), "round samples (plan)": plan["round_samples"],
            "passes": round(m["samples_trained"] / n, 2), "train s": round(m["train_seconds"], 1),
            "µs / sample trained": round(1e6 * m["train_seconds"] / m["samples_trained"], 3),
            "fit wall s": round(sec, 1), "fit peak RSS MiB": round(rss), "budget": args.growth_budget,
            "PSNR (eval)": round(ev["metrics"]["psnr"], 2), "estimate": None if m["train_psnr"] is None else round(m["train_psnr"], 2),
            "eval s": round(esec, 1), "eval peak RSS MiB": round(erss), "load": load()})
        progress(f"growth {edge}: {rows[-1]}")
        for p in (store, run):
            shutil.rmtree(p, ignore_errors=True)
        w.unlink()
    return rows


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
                                                    "log_every": 10**6, "seed": 0})
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
    ap.add_argument("--section", action="append", choices=["defaults", "equal", "growth", "rate"])
    ap.add_argument("--edge", type=int, default=1024, help="mosaic edge for equal/rate")
    ap.add_argument("--capacity", type=float, default=0.19, help="params per value for equal (0.19: the DESIGN prototype's 590k)")
    ap.add_argument("--time-budget", type=float, default=180.0, help="training seconds per model in equal")
    ap.add_argument("--rate-capacities", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2, 0.5])
    ap.add_argument("--rate-time", type=float, default=90.0)
    ap.add_argument("--growth-edges", type=int, nargs="+", default=[1024, 2048, 4096, 8192],
                    help="growth: mosaic edges (1, 4, 16, 64 MP), each a multiple of the first")
    ap.add_argument("--growth-capacity", type=float, default=0.2)
    ap.add_argument("--growth-ratio", type=float, default=0.04,
                    help="growth: selected share per step, small enough that the largest size's round holds it")
    ap.add_argument("--growth-steps", type=int, default=500, help="growth: steps (passes = steps x ratio)")
    ap.add_argument("--growth-budget", default="4G")
    ap.add_argument("--sweep-edge", type=int, default=256)
    ap.add_argument("--sweep-steps", type=int, default=300)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.smoke:
        args.edge, args.time_budget, args.rate_time, args.rate_capacities = 128, 3.0, 2.0, [0.2]
        args.sweep_edge, args.sweep_steps = 64, 5
        args.growth_edges, args.growth_steps, args.growth_ratio, args.growth_budget = [64, 128], 4, 0.2, "1G"
    sections = args.section or ["defaults", "equal", "growth", "rate"]
    out = results_path(args.out, "capacity", args.smoke)
    parts = [f"## Capacity: the tiled SIREN bank vs one SIREN\n\n{time.strftime('%Y-%m-%d %H:%M')} on {machine()}; "
             f"start {load()}\n\nCommand: `python benchmarks/bench_capacity.py {' '.join(argv or sys.argv[1:])}`\n"]
    found: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_capacity_") as tmp:
        work = Path(tmp)
        if "defaults" in sections:
            rows = found["defaults"] = section_defaults(work, args)
            parts.append(f"### Defaults sweep ({args.sweep_edge}² Kodak mosaic, {args.sweep_steps} steps, uniform 25% "
                         f"batches, 1 thread; one knob varied from the defaults at a time; CPU seconds)\n\n"
                         + markdown(rows) + f"\n{load()}\n")
        if "equal" in sections:
            rows, seam = found["equal"], found["seams"] = section_equal(work, args)
            parts.append(f"### Equal parameters, equal time ({args.edge}² Kodak mosaic, capacity {args.capacity}, "
                         f"{args.time_budget:g} s of training each, default teacher; PSNR by eval)\n\n"
                         + markdown(rows) + "\nSeams (tiled model; band = 2 samples each side of a tile border; samples within 2 of the mosaic's "
                         "crop edges left out of band and interior, reported apart):\n\n"
                         + markdown(seam) + f"\n{load()}\n")
        if "growth" in sections:
            rows = found["growth"] = section_growth(work, args)
            parts.append(f"### Growth ({'/'.join(str(e) for e in args.growth_edges)}² mirror-tiled copies of one Kodak "
                         f"mosaic; tiled, capacity {args.growth_capacity}, ratio {args.growth_ratio}, "
                         f"{args.growth_steps} steps, forced out of core at --memory-budget {args.growth_budget}; "
                         f"PSNR by eval of the float16 weights)\n\n" + markdown(rows) + f"\n{load()}\n")
        if "rate" in sections:
            rows = found["rate"] = section_rate(work, args)
            parts.append(f"### Rate / quality ({args.edge}² Kodak mosaic, tiled, {args.rate_time:g} s each; JPEG/WebP "
                         f"by Pillow at the largest quality within the same bytes)\n\n" + markdown(rows) + f"\n{load()}\n")
    text = "\n".join(parts)
    print(text)
    if out is not None:
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
