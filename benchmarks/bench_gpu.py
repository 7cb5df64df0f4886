"""The benchmarks at the paper's scale on one GPU (``benchmarks/gpu.sh`` runs this).

Three sections, each written to ``results/gpu.md`` as soon as it is done (so a run cut
short keeps what it measured), in this order:

1. scoring: `bench_scoring` on a ``--score-px``² store with SIREN 6x256 and 4x64, fp32
   and bf16 (round_topk through Zarr + Dask vs in-memory predict), and the fit loop vs a
   raw torch step on a ``--train-px``² batch;
2. out of core: `bench_outofcore` on a generated ``--ooc-edge``² RGB store (8192² = 67 MP,
   written straight to Zarr), fit with ``--ooc-budget`` so it runs in rounds, then eval;
   peak RSS of each child;
3. teachers: Kodak images at full size (768x512), SIREN 6x256, T = 5000, all four
   methods (`_common.compare_methods`: time-to-target of full's final PSNR, PSNR/SSIM of
   the final weights). Images run while ``--time-limit`` allows another one (the first
   image's time is the estimate), so the whole script stays under ~10 min on an H100.

    bash benchmarks/gpu.sh                               # on a GPU node
    python benchmarks/bench_gpu.py --smoke --device cpu  # seconds, on CPU (CI)

Exits 2 with a message when ``--device cuda`` and CUDA is unavailable.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DATA,
    compare_methods,
    markdown,
    parse_method,
    progress,
    psnr_time_axes,
    pyplot,
    results_path,
    rounded,
    summarise_methods,
    warm_up,
    write_sections,
)

METHODS = ["full=full", "random=random", "int=int", "intstream=intstream"]


def kodak_store(img: int, size: tuple[int, int] | None, work: Path) -> str:
    """Ingest a Kodak image, at its own size or downscaled (smoke) with PIL's default filter."""
    from PIL import Image

    from intstream.ingest import ingest

    src = DATA / "kodak" / f"kodim{img:02d}.png"
    if size is not None:
        png = work / f"{src.stem}_{size[0]}x{size[1]}.png"
        Image.open(src).convert("RGB").resize(size).save(png)
        src = png
    return ingest(src, work / f"{src.stem}.zarr", overwrite=True, progress=False)["store"]


def section_scoring(args, work: Path) -> tuple[list[dict], list[dict]]:
    from bench_scoring import scoring_rows, training_rows

    from intstream.testing import make_image_store

    big = make_image_store(work / "score.zarr", (args.score_px, args.score_px), overwrite=True)
    small = make_image_store(work / "train.zarr", (args.train_px, args.train_px), overwrite=True)
    scoring, training = [], []
    for spec in args.models:
        scoring += scoring_rows(big, spec, device=args.device, repeats=args.repeats)
        training += training_rows(small, spec, work, steps=args.train_steps, device=args.device)
    return scoring, training


def section_outofcore(args, work: Path) -> list[dict]:
    from bench_outofcore import bench_case

    opts = SimpleNamespace(source="store", steps=args.ooc_steps, width=args.width, depth=args.depth,
                           memory_budget=args.ooc_budget, device=args.device, image_chunks=args.ooc_chunks,
                           audio_chunks=None, eval_max_samples=float("inf"))
    case = {"name": f"image {args.ooc_edge}²", "kind": "image", "edge": args.ooc_edge}
    return [bench_case(case, work, opts)]


def section_teachers(args, work: Path, deadline: float) -> list[dict]:
    methods = [parse_method(m) for m in METHODS]
    base = {"steps": args.steps, "width": args.width, "depth": args.depth, "log_every": args.log_every, "seed": 0}
    rows, per_image = [], None
    for img in args.images:
        t0 = time.perf_counter()
        if per_image is not None and t0 + per_image > deadline:
            progress(f"teachers: skipping kodim{img:02d} and later (--time-limit; one image takes ~{per_image:.0f} s)")
            break
        store = kodak_store(img, args.kodak_size, work)
        rows += compare_methods(store, methods, base, work, f"kodim{img:02d}", device=args.device)
        per_image = time.perf_counter() - t0
    return rows


def write(out: Path, title: str, sections: dict) -> None:
    write_sections(out.with_suffix(".md"), title, {name: [rounded(t) for t in tabs] for name, tabs in sections.items()})
    out.with_suffix(".json").write_text(json.dumps({"title": title, "sections": sections}, default=str))


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, nargs="+", default=[1, 2, 3], help="Kodak image numbers")
    ap.add_argument("--kodak-size", type=int, nargs=2, default=None, help="downscale to W H (default: full size)")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--score-px", type=int, default=4096, help="scored store edge (4096: 16 MP)")
    ap.add_argument("--models", nargs="+", default=["6x256", "4x64"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-px", type=int, default=512, help="training batch: the whole train-px² image")
    ap.add_argument("--train-steps", type=int, default=50)
    ap.add_argument("--ooc-edge", type=int, default=8192)
    ap.add_argument("--ooc-steps", type=int, default=200)
    ap.add_argument("--ooc-budget", type=int, default=1 << 30, help="fit --memory-budget in bytes")
    ap.add_argument("--ooc-chunks", type=int, default=None)
    ap.add_argument("--only", nargs="+", choices=["scoring", "outofcore", "teachers"], default=None)
    ap.add_argument("--time-limit", type=float, default=480.0, help="seconds; no new Kodak image starts past it")
    ap.add_argument("--tmp", type=Path, default=None)
    ap.add_argument("--out", help="output stem (default: benchmarks/results/gpu; smoke: none)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (use with --device cpu)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.images, args.kodak_size, args.steps, args.width, args.depth, args.log_every = [1], (32, 24), 20, 16, 3, 5
        args.score_px, args.models, args.repeats, args.train_px, args.train_steps = 128, ["3x16"], 1, 16, 5
        args.ooc_edge, args.ooc_steps, args.ooc_budget, args.ooc_chunks = 256, 20, 1 << 30, 128
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        progress("bench_gpu: --device cuda but torch sees no CUDA device "
                 f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run on a GPU node, or --device cpu")
        return 2
    if "teachers" in (args.only or ["teachers"]) and not (DATA / "kodak").is_dir():
        progress(f"bench_gpu: Kodak images not found in {DATA / 'kodak'} (set INTSTREAM_DATA)")
        return 2
    card = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    title = (f"GPU benchmarks on {card} (device {args.device}; SIREN {args.depth}x{args.width}, T={args.steps} "
             f"for the teachers)")
    out = results_path(args.out, "gpu", args.smoke)
    t0 = time.perf_counter()
    deadline = t0 + args.time_limit
    sections: dict[str, list] = {}
    tmp = Path(tempfile.mkdtemp(prefix="intstream-gpu-", dir=args.tmp))
    wanted = args.only or ["scoring", "outofcore", "teachers"]
    try:
        warm_up(tmp, args.device)
        for name in wanted:
            progress(f"{name} ... ({time.perf_counter() - t0:.0f} s in)")
            if name == "scoring":
                sections[name] = list(section_scoring(args, tmp))
            elif name == "outofcore":
                sections[name] = [section_outofcore(args, tmp)]
            else:
                rows = section_teachers(args, tmp, deadline)
                sections[name] = [summarise_methods(rows), rows]
                if out is not None and rows:
                    plt = pyplot()
                    fig, ax = plt.subplots(figsize=(7, 4.5))
                    psnr_time_axes(ax, [r for r in rows if r["signal"] == rows[0]["signal"]],
                                   f"{rows[0]['signal']} on {card}")
                    fig.tight_layout()
                    fig.savefig(out.with_suffix(".png"), dpi=110)
                    plt.close(fig)
            if out is not None:
                write(out, title, sections)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if out is None:
        print("\n".join(f"### {name}\n\n" + "\n".join(markdown(rounded(t)) for t in tabs)
                        for name, tabs in sections.items()))
    progress(f"done in {time.perf_counter() - t0:.0f} s" + (f" -> {out.with_suffix('.md')}" if out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
