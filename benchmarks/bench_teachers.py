"""Teachers side by side on a CPU-sized version of the paper's image protocol.

Each method trains the same SIREN on the same downscaled Kodak images from the same seed;
the run log gives the PSNR of the current weights (over every pixel) against training
wall time (scoring and selection included, the logging evaluation excluded). The
target is the final PSNR of ``full`` at its standard T; time-to-target is the training
time at which a method's current weights first reach it.

    python benchmarks/bench_teachers.py                      # the table in BENCHMARKS.md
    python benchmarks/bench_teachers.py --smoke              # seconds, for CI
    python benchmarks/bench_teachers.py --method 'mix=intstream:random_share=0.5:steps=2000'

A method spec is ``label=strategy[:key=value...]`` with FitConfig keys as overrides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, parse_method, time_to, write_table  # noqa: E402

from intstream.fit import FitConfig, fit  # noqa: E402
from intstream.ingest import ingest  # noqa: E402

DEFAULT_METHODS = [
    "full=full",
    "random=random",
    "int=int",
    "intstream=intstream",
]


def prepare(image: Path, size: tuple[int, int], work: Path) -> str:
    """Downscale with PIL's default filter (as DESIGN §8) and ingest."""
    png = work / f"{image.stem}_{size[0]}x{size[1]}.png"
    Image.open(image).convert("RGB").resize(size).save(png)
    return ingest(png, work / (png.stem + ".zarr"), overwrite=True)["store"]


def run(args) -> list[dict]:
    methods = [parse_method(m) for m in (args.method or DEFAULT_METHODS)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Warm torch up (thread pools, kernels) so the first method is not charged for it.
        warm = prepare(DATA / "kodak" / "kodim01.png", (16, 16), work)
        fit(warm, work / "warm", FitConfig(steps=20, width=16, depth=3, log_every=10), overwrite=True)
        for img in args.images:
            store = prepare(DATA / "kodak" / f"kodim{img:02d}.png", (args.width_px, args.height_px), work)
            results = {}
            for label, opts in methods:
                cfg = FitConfig(**{"steps": args.steps, "width": args.width, "depth": args.depth,
                                   "log_every": args.log_every, "seed": args.seed, "checkpoint_every": 1e9, **opts})
                run_dir = work / f"{img}_{label}"
                m = fit(store, run_dir, cfg, overwrite=True)
                log = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
                results[label] = (m, log)
                print(f"kodim{img:02d} {label:>12}: {m['train_psnr']:.2f} dB in {m['train_seconds']:.1f} s "
                      f"({m['steps']} steps)", file=sys.stderr)
            target = results["full"][0]["train_psnr"] if "full" in results else args.target
            t_full = time_to(results["full"][1], target) if "full" in results else None
            for label, (m, log) in results.items():
                ttt = time_to(log, target)
                rows.append({
                    "image": f"kodim{img:02d}", "method": label, "steps": m["steps"],
                    "seconds": m["train_seconds"], "steps_per_s": m["steps_per_second"],
                    "final_psnr": m["train_psnr"], "target": target, "time_to_target": ttt,
                    "ratio_vs_full": None if (ttt is None or not t_full) else ttt / t_full,
                    "log": log,
                })
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        ratios = [r["ratio_vs_full"] for r in rs if r["ratio_vs_full"] is not None]
        out.append({
            "method": method,
            "final PSNR (dB)": round(statistics.mean(r["final_psnr"] for r in rs), 2),
            "train s": round(statistics.mean(r["seconds"] for r in rs), 1),
            "steps/s": round(statistics.mean(r["steps_per_s"] for r in rs), 1),
            "reached target": f"{len(ratios)}/{len(rs)}",
            "time-to-target / full (mean)": round(statistics.mean(ratios), 3) if ratios else None,
            "(median)": round(statistics.median(ratios), 3) if ratios else None,
        })
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = rows[0]["image"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["image"] != img:
            continue
        ax.plot([p["train_seconds"] for p in r["log"]], [p["psnr"] for p in r["log"]], label=r["method"])
    ax.axhline(rows[0]["target"], color="k", ls=":", lw=1, label="target (full, final)")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("PSNR of current weights (dB)")
    ax.set_title(f"{img}: teachers side by side")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[5])
    ap.add_argument("--width-px", type=int, default=256)
    ap.add_argument("--height-px", type=int, default=192)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=30.0, help="target PSNR when 'full' is not among the methods")
    ap.add_argument("--method", action="append", help="label=strategy[:key=value...] (repeatable)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "teachers"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.width_px, args.height_px, args.width, args.depth, args.steps, args.log_every = 32, 24, 16, 3, 30, 5
    t0 = time.perf_counter()
    rows = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    setting = (f"Kodak {args.images} at {args.width_px}x{args.height_px}, SIREN {args.depth}x{args.width}, "
               f"T={args.steps}, seed {args.seed}")
    per_image = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items() if k != "log"} for r in rows]
    write_table(out.with_suffix(".md"), f"Teachers ({setting})", summarise(rows), per_image)
    out.with_suffix(".json").write_text(json.dumps(rows))
    if not args.smoke:
        plot(rows, out.with_suffix(".png"))
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
