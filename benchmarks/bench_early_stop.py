"""A user who stops early: each teacher given only ``--time-budget B``, as ``fit`` takes it.

`bench_teachers.py` reads a method's PSNR at 0.1x, 0.25x ... of full's time *along one long
run*, whose LR is still high there. A user who has only B seconds passes ``--time-budget B``
alone: fit then sizes T to the budget and anneals the LR's cosine into it. This script fits
each method that way, per Kodak image (the §1 protocol: 128x96, SIREN 6x64, seed 0) and per
budget, and judges the final weights by ``eval`` (float16 export). Budgets default to 0.1,
0.25 and 0.5 of full's 1500-step time on the host that measured BENCHMARKS §13 (75 s).

    python benchmarks/bench_early_stop.py                         # 4 images x 3 budgets, ~11 min
    python benchmarks/bench_early_stop.py --budgets 5 10 --images 5 8
    python benchmarks/bench_early_stop.py --smoke                 # seconds, for CI
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, results_path, warm_up, write_table  # noqa: E402
from bench_teachers import prepare  # noqa: E402


def run(args) -> list[dict]:
    from intstream.evaluate import evaluate
    from intstream.export import export_weights
    from intstream.fit import FitConfig, fit

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warm_up(work)
        for img in args.images:
            name = f"kodim{img:02d}"
            store = prepare(DATA / "kodak" / f"{name}.png", (args.width_px, args.height_px), work)
            for budget in args.budgets:
                for strategy in args.strategies:
                    run_dir = work / f"{name}_{strategy}_{budget:g}"
                    cfg = FitConfig(strategy=strategy, width=args.width, depth=args.depth, time_budget=budget,
                                    log_every=10**6, seed=args.seed)
                    m = fit(store, run_dir, cfg, overwrite=True, progress=False)
                    weights = work / f"{run_dir.name}.safetensors"
                    export_weights(run_dir, weights, dtype="float16", overwrite=True)
                    psnr = evaluate(weights, metrics="psnr", device="cpu")["metrics"]["psnr"]
                    rows.append({"image": name, "budget_s": budget, "strategy": strategy, "steps": m["steps"],
                                 "train_s": round(m["train_seconds"], 2), "psnr": round(psnr, 2)})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict], strategies: list[str]) -> list[dict]:
    """Per budget: each strategy's mean PSNR, and every other strategy's lead over the first."""
    out = []
    ref = strategies[0]
    for budget in dict.fromkeys(r["budget_s"] for r in rows):
        at = [r for r in rows if r["budget_s"] == budget]
        psnr = {s: {r["image"]: r["psnr"] for r in at if r["strategy"] == s} for s in strategies}
        row = {"budget_s": budget}
        for s in strategies:
            row[f"{s} PSNR"] = round(sum(psnr[s].values()) / max(1, len(psnr[s])), 2)
            row[f"{s} train_s"] = round(sum(r["train_s"] for r in at if r["strategy"] == s) / max(1, len(psnr[s])), 2)
        for s in strategies[1:]:
            leads = [psnr[s][i] - psnr[ref][i] for i in psnr[ref] if i in psnr[s]]
            row[f"{s} − {ref} mean dB"] = round(sum(leads) / max(1, len(leads)), 2)
            row[f"{s} − {ref} worst dB"] = round(min(leads), 2) if leads else None
        out.append(row)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[5, 8, 1, 3])
    ap.add_argument("--budgets", type=float, nargs="+", default=[7.5, 18.75, 37.5], help="training seconds")
    ap.add_argument("--strategies", nargs="+", default=["full", "intstream"], help="the first is the reference")
    ap.add_argument("--width-px", type=int, default=128)
    ap.add_argument("--height-px", type=int, default=96)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="results stem (default benchmarks/results/early_stop; smoke: none)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.budgets, args.width_px, args.height_px, args.width, args.depth = [5], [1.0], 32, 24, 16, 3
    t0 = time.perf_counter()
    rows = run(args)
    out = results_path(args.out, "early_stop", args.smoke)
    summary = summarise(rows, args.strategies)
    if out is None:
        print(json.dumps(summary))
        return
    write_table(out.with_suffix(".md"), f"Early stop: each method given only --time-budget (Kodak {args.images} at "
                f"{args.width_px}x{args.height_px}, SIREN {args.depth}x{args.width}, seed {args.seed}; PSNR by eval)",
                summary, rows)
    out.with_suffix(".json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
