"""Rate-distortion on Kodak: intstream (fit --bpp -> export-weights -> eval --decode) against
JPEG, WebP, JPEG 2000 and AVIF (Pillow) at the same rates; PSNR/SSIM vs bpp, BD-rate vs JPEG.

Every number is measured on the files a user would get: the weights file's bytes for
intstream (header and all), the encoded image's bytes for the codecs, and PSNR/SSIM
computed by one function on the decoded 8-bit RGB images (skimage SSIM, data range 255).

intstream runs the real CLI in a subprocess per (image, rate): ``fit --bpp B`` sizes the
model for the rate, ``export-weights`` picks the widest integer width that fits (optionally
after ``--finetune N`` steps of quantisation-aware training), ``eval --decode x.png``.
Codecs sweep their quality knob per image; their PSNR at intstream's achieved bpp is
interpolated linearly in log(bpp) on that sweep (no extrapolation: JPEG cannot reach
below ~0.15-0.2 bpp on these images, shown as —).

BD-rate (Bjøntegaard): per image, a cubic fit of log(rate) against PSNR for both curves,
integrated over the PSNR range they share; the mean rate difference in %
(negative = intstream needs fewer bits than JPEG for the same PSNR). With fewer than 4
intstream rates the fit degree drops to points - 1 (said in the output).

Usage::

    python benchmarks/bench_rd.py                      # 12 images, 4 rates (long on a CPU)
    python benchmarks/bench_rd.py --images 3 --rates 0.3,0.6,1.2 --steps 300 --finetune 50
    python benchmarks/bench_rd.py --smoke              # 1 crop, 2 rates, a few steps
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, intstream_cmd, markdown, progress, results_path  # noqa: E402

CODECS = ("jpeg", "webp", "jpeg2000", "avif")


# -- metrics and codecs ---------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


def encode(img: Image.Image, codec: str, q) -> bytes:
    buf = io.BytesIO()
    if codec == "jpeg":
        img.save(buf, "JPEG", quality=int(q), optimize=True)
    elif codec == "webp":
        img.save(buf, "WEBP", quality=int(q), method=6)
    elif codec == "jpeg2000":  # q = target bpp; Pillow takes a compression ratio over 24-bit RGB
        img.save(buf, "JPEG2000", quality_mode="rates", quality_layers=[24.0 / float(q)], irreversible=True)
    elif codec == "avif":
        img.save(buf, "AVIF", quality=int(q), speed=6)
    return buf.getvalue()


def codec_available(codec: str) -> bool:
    from PIL import features

    return features.check({"jpeg": "jpg", "webp": "webp", "jpeg2000": "jpg_2000", "avif": "avif"}[codec])


SWEEPS = {
    "jpeg": [1, 2, 3, 4, 5, 7, 10, 15, 20, 30, 40, 50, 65, 80, 90],
    "webp": [0, 1, 3, 5, 10, 15, 20, 30, 45, 60, 75, 90, 95, 100],
    "jpeg2000": [0.05, 0.08, 0.12, 0.18, 0.25, 0.35, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0],
    "avif": [0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90],
}


def codec_curve(img: Image.Image, ref: np.ndarray, codec: str) -> list[dict]:
    n = ref.shape[0] * ref.shape[1]
    out = []
    for q in SWEEPS[codec]:
        t0 = time.perf_counter()
        data = encode(img, codec, q)
        t_enc = time.perf_counter() - t0
        dec = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        out.append({"q": q, "bytes": len(data), "bpp": 8 * len(data) / n, "psnr": psnr(ref, dec), "ssim": ssim(ref, dec),
                    "encode_s": t_enc})
    return sorted(out, key=lambda r: r["bpp"])


def at_rate(curve: list[dict], bpp: float, key: str) -> float | None:
    """``key`` on a codec's sweep at ``bpp`` (linear in log bpp), None outside the sweep."""
    xs = np.log([r["bpp"] for r in curve])
    ys = [r[key] for r in curve]
    x = math.log(bpp)
    if x < xs.min() or x > xs.max():
        return None
    return float(np.interp(x, xs, ys))


def bd_rate(anchor: list[tuple[float, float]], test: list[tuple[float, float]]) -> tuple[float | None, int]:
    """Bjøntegaard delta rate (%) of ``test`` vs ``anchor``; points are (bpp, psnr). Returns (bd, degree)."""
    if len(anchor) < 2 or len(test) < 2:
        return None, 0
    ra, pa = np.log([r for r, _ in anchor]), np.array([p for _, p in anchor])
    rt, pt = np.log([r for r, _ in test]), np.array([p for _, p in test])
    lo, hi = max(pa.min(), pt.min()), min(pa.max(), pt.max())
    if hi <= lo:
        return None, 0
    deg = min(3, len(anchor) - 1, len(test) - 1)
    ca, ct = np.polyint(np.polyfit(pa, ra, deg)), np.polyint(np.polyfit(pt, rt, deg))
    diff = ((np.polyval(ct, hi) - np.polyval(ct, lo)) - (np.polyval(ca, hi) - np.polyval(ca, lo))) / (hi - lo)
    return float((math.exp(diff) - 1) * 100), deg


# -- intstream ----------------------------------------------------------------------------------


def run_cli(args: list[str], *, stdin: str | None = None) -> dict:
    r = subprocess.run(intstream_cmd() + args, input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"intstream {' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def intstream_point(png: Path, store: Path, work: Path, bpp: float, args) -> dict:
    run = work / f"run_{bpp}"
    weights = work / f"w_{bpp}.safetensors"
    decoded = work / f"d_{bpp}.png"
    fit_args = ["fit", str(store), "-o", str(run), "--bpp", str(bpp), "--model", args.model,
                "--steps", str(args.steps), "--strategy", args.strategy, "--log-every", str(args.steps),
                "--device", "cpu", "--overwrite", "-q"]
    if args.depth:
        fit_args += ["--depth", str(args.depth)]
    if args.ratio:  # a fixed share per step (the strategies' presets grow it towards the whole signal)
        fit_args += ["--ratio", str(args.ratio), "--ratio-schedule", "constant"]
    t0 = time.perf_counter()
    fit = run_cli(fit_args)
    fit_wall = time.perf_counter() - t0
    exp_args = ["export-weights", str(run), "-o", str(weights), "--overwrite", "--device", "cpu"]
    if args.finetune:
        exp_args += ["--finetune", str(args.finetune)]
    t0 = time.perf_counter()
    exp = run_cli(exp_args)
    export_wall = time.perf_counter() - t0
    run_cli(["eval", str(weights), "--decode", str(decoded), "--metrics", "none", "--device", "cpu", "--overwrite"])
    ref = np.asarray(Image.open(png).convert("RGB"))
    dec = np.asarray(Image.open(decoded).convert("RGB"))
    row = {"target_bpp": bpp, "bpp": 8 * exp["bytes"] / (ref.shape[0] * ref.shape[1]), "bytes": exp["bytes"],
           "dtype": exp["dtype"], "width": fit["rate"]["width"], "params": exp["params"],
           "psnr": psnr(ref, dec), "ssim": ssim(ref, dec), "train_psnr": fit.get("train_psnr"),
           "fit_s": fit_wall, "train_s": fit.get("train_seconds"), "export_s": export_wall,
           "source_ratio": exp.get("source_ratio")}
    if exp.get("finetune"):
        row["qat_gain_db"] = exp["finetune"]["after"]["psnr_quantised"] - exp["finetune"]["before"]["psnr_quantised"]
    return row


# -- entropy coders on real weights ----------------------------------------------------------


def coder_comparison(run_dir: str, repeats: int = 5) -> str:
    """Symbol bytes of a run's quantised weights: empirical entropy vs ans, zstd, brotli; decode times."""
    import zlib as _zlib

    from intstream.checkpoint import load_checkpoint
    from intstream.export import _code_symbols, _decode_symbols, is_quantised, quantize

    ck = load_checkpoint(Path(run_dir) / "checkpoint.pt")
    state = {k: v.float().numpy() for k, v in ck["model"].items()}
    rows = []
    for bits in (8, 6, 4):
        entries, symbols = [], []
        for name, a in state.items():
            if is_quantised(name, a.shape, {"layers.0.weight", "layers.0.bias"}):
                v, _ = quantize(a, bits)
                entries.append({"name": name, "shape": list(a.shape), "lo": int(v.min()), "hi": int(v.max()),
                                "mean": float(f"{v.mean():.3g}"), "std": max(float(f"{v.std():.3g}"), 0.5)})
                symbols.append(v)
        n = sum(v.size for v in symbols)
        ent = sum(-(c * np.log2(c / v.size)).sum() / 8 for v in symbols for c in [np.unique(v, return_counts=True)[1]])
        raw = b"".join((v.ravel() - e["lo"]).astype("u1" if e["hi"] - e["lo"] < 256 else "<u2").tobytes()
                       for e, v in zip(entries, symbols))
        row = {"bits": bits, "weights": n, "nominal B": n * bits // 8, "entropy B": round(ent)}
        for coder in ("ans", "zstd"):
            stream = _code_symbols(coder, entries, symbols)
            t0 = time.perf_counter()
            for _ in range(repeats):
                _decode_symbols(coder, entries, stream, Path(run_dir))
            row[f"{coder} B"] = len(stream)
            row[f"{coder} decode ms"] = round(1000 * (time.perf_counter() - t0) / repeats, 2)
        try:
            import brotli

            b = brotli.compress(raw, quality=11)
            t0 = time.perf_counter()
            for _ in range(repeats):
                brotli.decompress(b)
            row["brotli B"] = len(b)
            row["brotli decode ms"] = round(1000 * (time.perf_counter() - t0) / repeats, 2)
        except ImportError:
            row["brotli B"] = None
        row["zlib-9 B"] = len(_zlib.compress(raw, 9))
        rows.append(row)
    return markdown(rows)


def qat_table(run_dir: str, steps=(0, 100, 300), dtypes=("int8", "int6", "int5", "int4")) -> str:
    """PSNR drop of each integer width against float32, with and without ``--finetune`` (needs the run's store)."""
    from intstream.evaluate import evaluate
    from intstream.export import export_weights

    with tempfile.TemporaryDirectory(prefix="bench_qat_") as tmp:
        def ev(path):
            return evaluate(path, metrics="psnr,ssim", device="cpu", progress=False)["metrics"]

        ref_man = export_weights(run_dir, Path(tmp) / "f32.safetensors", dtype="float32")
        ref = ev(ref_man["weights"])
        rows = [{"dtype": "float32", "finetune steps": None, "bytes": ref_man["bytes"], "PSNR dB": round(ref["psnr"], 2),
                 "drop dB": 0.0, "SSIM": round(ref["ssim"], 4), "QAT s": None}]
        for dt in dtypes:
            for n in steps:
                man = export_weights(run_dir, Path(tmp) / f"{dt}_{n}.safetensors", dtype=dt, finetune=n, device="cpu")
                m = ev(man["weights"])
                rows.append({"dtype": dt, "finetune steps": n, "bytes": man["bytes"], "PSNR dB": round(m["psnr"], 2),
                             "drop dB": round(ref["psnr"] - m["psnr"], 2), "SSIM": round(m["ssim"], 4),
                             "QAT s": (man.get("finetune") or {}).get("seconds")})
    return markdown(rows)


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="First N Kodak images (default 12).")
    ap.add_argument("--rates", default="0.15,0.3,0.6,1.2", help="Target bpp list.")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--strategy", default="intstream")
    ap.add_argument("--model", default="single")
    ap.add_argument("--depth", type=int)
    ap.add_argument("--ratio", type=float, help="fit --ratio (share of samples per step).")
    ap.add_argument("--finetune", type=int, default=0)
    ap.add_argument("--codec-images", type=int, help="Codec curves on this many images (default: --images).")
    ap.add_argument("--crop", type=int, help="Centre crop of this size (smoke runs).")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", help="Output prefix (default benchmarks/results/rd; smoke: nothing unless given).")
    ap.add_argument("--coders", metavar="RUN_DIR", help="Only compare entropy coders on this run's weights.")
    ap.add_argument("--qat", metavar="RUN_DIR", help="Only measure quantisation drops with/without --finetune.")
    args = ap.parse_args()
    if args.qat:
        print(qat_table(args.qat))
        return
    if args.coders:
        print(coder_comparison(args.coders))
        return
    if args.smoke:
        args.images, args.rates, args.steps, args.crop = 1, "1.5,3", 20, args.crop or 128
    rates = [float(r) for r in args.rates.split(",")]
    out = results_path(args.out, "rd", args.smoke)
    codecs = [c for c in CODECS if codec_available(c)]
    files = sorted((DATA / "kodak").glob("*.png"))
    n_codec = max(args.images, args.codec_images or 0)
    load = os.getloadavg()
    rows, curves, t_start = [], {}, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_rd_") as tmp:
        tmp = Path(tmp)
        for i, f in enumerate(files[:n_codec]):
            img = Image.open(f).convert("RGB")
            if args.crop:
                w, h = img.size
                c = args.crop
                img = img.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
            ref = np.asarray(img)
            png = tmp / f"{f.stem}.png"
            img.save(png)
            curves[f.stem] = {c: codec_curve(img, ref, c) for c in codecs}
            progress(f"{f.stem}: codec curves done")
            if i >= args.images:
                continue
            store = tmp / f"{f.stem}.zarr"
            run_cli(["ingest", str(png), "-o", str(store), "-q"])
            work = tmp / f.stem
            work.mkdir()
            for bpp in rates:
                try:
                    row = intstream_point(png, store, work, bpp, args)
                except RuntimeError as exc:
                    progress(f"{f.stem} @ {bpp}: {exc}")
                    continue
                row["image"] = f.stem
                for c in codecs:
                    row[f"{c}_psnr"] = at_rate(curves[f.stem][c], row["bpp"], "psnr")
                    row[f"{c}_ssim"] = at_rate(curves[f.stem][c], row["bpp"], "ssim")
                rows.append(row)
                progress(f"{f.stem} @ {bpp} bpp: {row['bpp']:.3f} bpp {row['dtype']} w{row['width']} "
                         f"psnr {row['psnr']:.2f} (jpeg {row.get('jpeg_psnr')}) fit {row['fit_s']:.0f}s")
            if out is not None and rows:  # results so far, after every image (long runs may be cut short)
                write(out, rows, curves, rates, codecs, args, load, time.perf_counter() - t_start)
    report = write(out, rows, curves, rates, codecs, args, load, time.perf_counter() - t_start)
    print(report)


def write(out, rows, curves, rates, codecs, args, load, seconds) -> str:
    report = summarise(rows, curves, rates, codecs, args, load, os.getloadavg(), seconds)
    if out is not None:
        out.with_suffix(".md").write_text(report)
        out.with_suffix(".json").write_text(json.dumps({"rows": rows, "curves": curves, "args": vars(args)}, indent=1))
        plot(rows, curves, rates, codecs, out.with_suffix(".png"))
    return report


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def summarise(rows, curves, rates, codecs, args, load, load_end, seconds) -> str:
    table = []
    for b in rates:
        sel = [r for r in rows if r["target_bpp"] == b]
        if not sel:
            continue
        t = {"target bpp": b, "images": len(sel), "intstream bpp": _mean([r["bpp"] for r in sel]),
             "dtype": "/".join(sorted({r["dtype"] for r in sel})), "width": _mean([r["width"] for r in sel]),
             "intstream PSNR": _mean([r["psnr"] for r in sel]), "intstream SSIM": _mean([r["ssim"] for r in sel])}
        for c in codecs:
            vals = [r[f"{c}_psnr"] for r in sel]
            t[f"{c} PSNR"] = _mean(vals) if all(v is not None for v in vals) else None
            svals = [r[f"{c}_ssim"] for r in sel]
            t[f"{c} SSIM"] = _mean(svals) if all(v is not None for v in svals) else None
        t["fit s/image"] = _mean([r["fit_s"] for r in sel])
        t["export s"] = _mean([r["export_s"] for r in sel])
        if any("qat_gain_db" in r for r in sel):
            t["QAT gain dB"] = _mean([r.get("qat_gain_db") for r in sel])
        table.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in t.items()})
    # BD-rate vs JPEG, per image, on the PSNR range both curves share.
    bd_rows, degs = [], set()
    for img in sorted({r["image"] for r in rows}):
        pts = sorted((r["bpp"], r["psnr"]) for r in rows if r["image"] == img)
        row = {"image": img}
        for c in codecs:
            anchor = [(p["bpp"], p["psnr"]) for p in curves[img][c]]
            bd, deg = bd_rate(anchor, pts)
            if deg:
                degs.add(deg)
            row[f"BD-rate vs {c} %"] = None if bd is None else round(bd, 1)
        bd_rows.append(row)
    mean_bd = {k: _mean([r[k] for r in bd_rows]) for k in (bd_rows[0] if bd_rows else {}) if k != "image"}
    # Codec curves alone on every image (means at fixed rates).
    codec_table = []
    for b in sorted(set(rates) | {0.25, 0.5, 1.0}):
        t = {"bpp": b}
        for c in codecs:
            vals = [at_rate(cv[c], b, "psnr") for cv in curves.values()]
            t[f"{c} PSNR"] = round(_mean(vals), 2) if all(v is not None for v in vals) and vals else None
        codec_table.append(t)
    crossing = crossings(table, codecs)
    lines = [
        "## Rate–distortion on Kodak: intstream vs JPEG, WebP, JPEG 2000, AVIF",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}; command: `python benchmarks/bench_rd.py {' '.join(sys.argv[1:])}`",
        "",
        f"Setup: {args.images} Kodak image(s) at {'a ' + str(args.crop) + '² crop' if args.crop else 'full 768×512'}; "
        f"intstream `fit --bpp B --model {args.model} --strategy {args.strategy} --steps {args.steps}` "
        f"→ `export-weights` (auto int width{', --finetune ' + str(args.finetune) if args.finetune else ''}) → "
        f"`eval --decode`; codecs via Pillow at their own quality sweep, PSNR/SSIM interpolated at intstream's "
        f"achieved bpp (log-linear; — = outside the codec's reachable range). Bytes are whole files.",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs; load average {load[0]:.1f} at start, "
        f"{load_end[0]:.1f} at the end; wall {seconds / 60:.1f} min. Times are wall seconds under that load.",
        "",
        "### Mean over images at each target rate",
        "",
        markdown(table),
        f"### BD-rate of intstream (PSNR) against each codec, per image (cubic fit degree {sorted(degs)})",
        "",
        markdown(bd_rows),
        "Mean BD-rate: " + ", ".join(f"{k.replace('BD-rate ', '')} {v:+.1f}%" for k, v in mean_bd.items() if v is not None),
        "",
        "Crossings with JPEG (mean curves): " + crossing,
        "",
        f"### Codecs alone, mean PSNR over {len(curves)} image(s)",
        "",
        markdown(codec_table),
    ]
    return "\n".join(lines) + "\n"


def crossings(table, codecs) -> str:
    pts = [(t["intstream bpp"], t["intstream PSNR"], t.get("jpeg PSNR")) for t in table]
    pts = [(b, p, j) for b, p, j in pts if j is not None]
    if not pts:
        return "no rate where JPEG reaches intstream's bpp"
    out = []
    for (b0, p0, j0), (b1, p1, j1) in zip(pts, pts[1:]):
        d0, d1 = p0 - j0, p1 - j1
        if d0 * d1 < 0:
            x = math.exp(math.log(b0) + (math.log(b1) - math.log(b0)) * d0 / (d0 - d1))
            out.append(f"at ~{x:.2f} bpp")
    if out:
        return "curves cross " + ", ".join(out)
    sign = "above" if pts[0][1] > pts[0][2] else "below"
    return f"no crossing in the measured range: intstream stays {sign} JPEG from {pts[0][0]:.2f} to {pts[-1][0]:.2f} bpp"


def plot(rows, curves, rates, codecs, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    grid = np.exp(np.linspace(np.log(0.1), np.log(3.0), 40))
    for c in codecs:
        for ax, key in zip(axes, ("psnr", "ssim")):
            ys = []
            for b in grid:
                vals = [at_rate(cv[c], b, key) for cv in curves.values()]
                ys.append(_mean(vals) if all(v is not None for v in vals) else np.nan)
            ax.plot(grid, ys, label=c)
    for ax, key in zip(axes, ("psnr", "ssim")):
        xs, ys = [], []
        for b in rates:
            sel = [r for r in rows if r["target_bpp"] == b]
            if sel:
                xs.append(_mean([r["bpp"] for r in sel]))
                ys.append(_mean([r[key] for r in sel]))
        ax.plot(xs, ys, "ko-", label="intstream")
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(key.upper())
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("Kodak rate–distortion (means over images)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
