"""Teachers side by side on a CPU-sized version of the paper's image protocol.

Each method trains the same SIREN on the same downscaled Kodak images from the same seed;
the run log gives the PSNR of the current weights (over every pixel) against training
wall time (scoring and selection included, the logging evaluation excluded). The
target is the final PSNR of ``full`` at its standard T; time-to-target is the training
time at which a method's current weights first reach it. Final quality is measured by
``intstream eval`` on the final weights.

    python benchmarks/bench_teachers.py                      # the table in BENCHMARKS.md
    python benchmarks/bench_teachers.py --smoke              # seconds, for CI
    python benchmarks/bench_teachers.py --method 'mix=intstream:random_share=0.5:steps=2000'
    python benchmarks/bench_teachers.py --out-of-core        # the same images forced out of core
    python benchmarks/bench_teachers.py --mosaic 2048 --time-budget 300   # one large image out of core

``--out-of-core`` ingests each image in ``--chunk``² chunks and fits it in rounds
(`intstream.teach.rounds`) with every logged PSNR measured over all pixels
(``measure_psnr``), so time-to-target is against out-of-core ``full``; it also runs the
in-core default at equal steps (``intstream_in_core``) and reports the gap between the
estimated and the measured PSNR of the final weights (``estimate_gap_db``).

``--mosaic EDGE`` fits one ``EDGE``² mosaic of Kodak crops out of core (``--chunk``² chunks,
``--memory-budget``) with the default, the paper's mini-batch ``int`` and ``full``, each for
``--time-budget`` training seconds (T fitted to the budget, as ``fit --time-budget`` does
alone); eval of the final weights is the judge, next to the
teacher's own estimate (``estimate_gap_db``). Logged PSNRs are the estimates here (a
measured log would stream the whole mosaic per line).

A method spec is ``label=strategy[:key=value...]`` with FitConfig keys as overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA, compare_methods, kodak_mosaic, parse_method, psnr_time_axes, pyplot, results_path, rounded, summarise_methods, warm_up,
    write_table,
)

from intstream.ingest import ingest  # noqa: E402

# `intstream` without a steps override runs STEPS_FACTOR x the standard T (see compare_methods).
DEFAULT_METHODS = ["full=full", "random=random", "int=int", "intstream=intstream"]


def prepare(image: Path, size: tuple[int, int], work: Path, chunks: tuple[int, int] | None = None) -> str:
    """Downscale with PIL's default filter (as DESIGN §8) and ingest."""
    png = work / f"{image.stem}_{size[0]}x{size[1]}.png"
    Image.open(image).convert("RGB").resize(size).save(png)
    return ingest(png, work / (png.stem + ".zarr"), chunks=chunks, overwrite=True)["store"]


def estimate_gap(rows: list[dict], work: Path) -> None:
    """Out of core: the final weights' estimated PSNR (the teacher's per-chunk statistics)
    minus their measured one (eval), per row."""
    from intstream.checkpoint import load_checkpoint

    for r in rows:
        if r["method"].endswith("_in_core"):
            continue
        ck = load_checkpoint(work / f"{r['signal']}_{r['method']}" / "checkpoint.pt")
        est = ck["summary"].get("estimated_psnr")
        r["estimated_psnr"] = est
        r["estimate_gap_db"] = None if est is None else est - r["eval_psnr"]


def run(args) -> list[dict]:
    methods = [parse_method(m) for m in (args.method or DEFAULT_METHODS)]
    base = {"steps": args.steps, "log_every": args.log_every, "seed": args.seed}
    if args.width:  # else fit's default model for the signal (--mosaic)
        base.update(width=args.width, depth=args.depth)
    chunks = None
    if args.out_of_core:
        base.update(out_of_core=True, measure_psnr=True)
        chunks = (args.chunk, args.chunk)
        # The in-core default at the same steps: what the round structure costs.
        methods = methods + [("intstream_in_core", {"strategy": "intstream", "out_of_core": False})]
    rows = []
    if args.mosaic:
        return run_mosaic(args, methods, base)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warm_up(work)
        for img in args.images:
            name = f"kodim{img:02d}"
            store = prepare(DATA / "kodak" / f"{name}.png", (args.width_px, args.height_px), work, chunks)
            got = compare_methods(store, methods, base, work, name, metrics="psnr,ssim", target=args.target)
            if args.out_of_core:
                estimate_gap(got, work)
            rows += got
    return rows


def run_mosaic(args, methods: list[tuple[str, dict]], base: dict) -> list[dict]:
    # No steps: each fit sizes T to the time budget and anneals its LR into it (a strategy
    # whose schedules depend on T, the paper's int, runs its preset T cut at the budget).
    base = {**base, "out_of_core": True, "time_budget": args.time_budget, "steps": None,
            "memory_budget": args.memory_budget, "log_every": args.log_every}
    methods = [(label, {k: v for k, v in opts.items() if k != "steps"}) for label, opts in methods
               if opts["strategy"] in ("intstream", "int", "full")]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        work = Path(tmp)
        warm_up(work)
        png = kodak_mosaic(args.mosaic, work / f"mosaic_{args.mosaic}.png")
        store = ingest(png, work / "mosaic.zarr", chunks=(args.chunk, args.chunk), overwrite=True)["store"]
        rows = compare_methods(store, methods, base, work, png.stem, metrics="psnr", target=args.target)
        estimate_gap(rows, work)
    for r in rows:  # the log holds estimates: time-to-target on them would not be honest
        r.update(target=None, time_to_target=None, ttt_vs_full=None)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=list(range(1, 13)))
    ap.add_argument("--width-px", type=int, default=128)
    ap.add_argument("--height-px", type=int, default=96)
    ap.add_argument("--width", type=int, help="SIREN width (default 64; --mosaic: fit's default model)")
    ap.add_argument("--depth", type=int, help="SIREN depth (default 6; --mosaic: fit's default model)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=30.0, help="target PSNR when 'full' is not among the methods")
    ap.add_argument("--method", action="append", help="label=strategy[:key=value...] (repeatable)")
    ap.add_argument("--out", help="results stem (default benchmarks/results/teachers; smoke: none)")
    ap.add_argument("--out-of-core", action="store_true", help="force every fit out of core (rounds over chunks)")
    ap.add_argument("--chunk", type=int, default=32, help="chunk edge when --out-of-core (12 chunks at 128x96)")
    ap.add_argument("--mosaic", type=int, help="fit one EDGE² Kodak mosaic out of core instead (see the notes)")
    ap.add_argument("--time-budget", type=float, default=300.0, help="--mosaic: training seconds per method")
    ap.add_argument("--memory-budget", type=int, default=1 << 30, help="--mosaic: bytes")
    ap.add_argument("--tmp", help="--mosaic: where the store goes (default: the system temp dir)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    if not args.mosaic:  # the paper's Kodak protocol: one SIREN 6x64
        args.width, args.depth = args.width or 64, args.depth or 6
    if args.smoke:
        args.images = [5]
        args.width_px, args.height_px, args.width, args.depth, args.steps, args.log_every = 32, 24, 16, 3, 30, 5
        args.chunk = 12
        if args.mosaic:
            args.mosaic, args.chunk, args.time_budget = 512, 128, 3.0
    t0 = time.perf_counter()
    rows = run(args)
    setting = (f"Kodak {args.images} at {args.width_px}x{args.height_px}, SIREN {args.depth}x{args.width}, "
               f"full/random/int T={args.steps}, seed {args.seed}"
               + (f", out of core in {args.chunk}² chunks" if args.out_of_core else ""))
    if args.mosaic:
        model = f"SIREN {args.depth}x{args.width}" if args.width else "fit's default model"
        setting = (f"{args.mosaic}² Kodak mosaic out of core in {args.chunk}² chunks, {model}, "
                   f"{args.time_budget:g} s of training per method, --memory-budget {args.memory_budget}")
    name = "teachers_mosaic" if args.mosaic else "teachers_ooc" if args.out_of_core else "teachers"
    out = results_path(args.out, name, args.smoke)
    if out is None:
        print(json.dumps(summarise_methods(rows)))
        return
    write_table(out.with_suffix(".md"), f"Teachers ({setting})", summarise_methods(rows), rounded(rows))
    out.with_suffix(".json").write_text(json.dumps(rows))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    first = rows[0]["signal"]
    psnr_time_axes(ax, [r for r in rows if r["signal"] == first], f"{first}: teachers side by side")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
