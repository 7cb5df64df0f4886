"""Scoring and training throughput: the Zarr + Dask paths against raw torch.

Scoring (samples/s): INT's error map over every sample of a generated image store
(``--pixels``², RGB uint8, the store's default 1024² chunks), three ways, in fp32 and
with bf16 autocast:

* ``round_topk``: `intstream.teach.graph.round_topk` over all chunks -- Zarr reads,
  coordinates, the no-grad forward, per-chunk top-k and the tree merge, as an
  out-of-core round does it;
* ``select``: the in-core teacher's work on in-memory tensors -- `intstream.models.predict`,
  the L1 error and `intstream.teach.topk.topk_indices`;
* ``predict``: the bare forward (`predict`) on in-memory tensors, the ceiling.

Training (steps/s) on a ``--train-px``² image with the whole image as the batch: the fit
loop (`intstream.fit.fit`, strategy ``full``: no scoring, so it shows the loop's own
overhead) against a raw torch step (forward, MSE, backward, Adam) on the same batch.

Each for the paper's SIREN 6x256 and a small one (``--model DEPTHxWIDTH``, repeatable).

    python benchmarks/bench_scoring.py                  # results/scoring.{md,json,png}; ~5 min on 2 cores
    python benchmarks/bench_scoring.py --smoke          # seconds, for CI
    python benchmarks/bench_scoring.py --pixels 4096 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown, progress, pyplot, results_path, rounded, warm_up, write_table  # noqa: E402

DTYPES = ("float32", "bfloat16")


def parse_model(spec: str) -> tuple[int, int]:
    """``"6x256"`` -> (depth, width)."""
    depth, _, width = spec.lower().partition("x")
    return int(depth), int(width)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, repeats: int, device: str) -> float:
    """Fastest of ``repeats`` timed calls (the others measure the neighbours)."""
    best = float("inf")
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def scoring_rows(store_path: Path, spec: str, *, device: str = "cpu", repeats: int = 1, ratio: float = 0.2) -> list[dict]:
    """Samples/s of the three scoring paths, fp32 and bf16, for one model on one store."""
    import torch

    from intstream.teach.graph import model_state, round_topk
    from intstream.models import ModelConfig, build_model, count_params, predict
    from intstream.store import open_store
    from intstream.teach.topk import topk_indices

    store = open_store(store_path)
    depth, width = parse_model(spec)
    cfg = ModelConfig(in_dim=store.ndim, out_dim=store.channels, width=width, depth=depth)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    ms = model_state(cfg, model.state_dict())
    slices = store.chunk_slices()
    n = store.n_samples
    k = int(ratio * n)
    coords, targets = (torch.from_numpy(a).to(device) for a in store.load_all())

    def select(dt):
        err = (predict(model, coords, dtype=dt) - targets).abs_().sum(dim=1)
        return topk_indices(err, k)

    rows = []
    for name in DTYPES:
        dt = torch.bfloat16 if name == "bfloat16" else None
        # Warm-up: builds the chunk tasks' cached model and the autocast kernels.
        round_topk(store_path, slices[:1], None, ms, 16, score_dtype=name, device=device)
        predict(model, coords[:4096], dtype=dt)
        times = {
            "round_topk (Zarr + Dask, all chunks)": best_time(
                lambda: round_topk(store_path, slices, None, ms, k, score_dtype=name, device=device), repeats, device),
            "select (in memory: predict + L1 + top-k)": best_time(lambda: select(dt), repeats, device),
            "predict (in memory, forward only)": best_time(lambda: predict(model, coords, dtype=dt), repeats, device),
        }
        ceiling = n / times["predict (in memory, forward only)"]
        for path, sec in times.items():
            rows.append({"model": f"SIREN {spec}", "params": count_params(model), "dtype": name, "path": path,
                         "samples": n, "seconds": sec, "samples_per_s": n / sec, "vs_predict": (n / sec) / ceiling})
            progress(f"  {spec} {name:>8} {path}: {n / sec / 1e3:.0f} k samples/s")
    return rows


def training_rows(store_path: Path, spec: str, work: Path, *, steps: int, device: str = "cpu") -> list[dict]:
    """Steps/s of the fit loop (strategy full) and of a raw torch step on the same whole-image batch."""
    import torch

    from intstream.fit import FitConfig, fit
    from intstream.models import ModelConfig, build_model
    from intstream.store import open_store

    store = open_store(store_path)
    depth, width = parse_model(spec)
    m = fit(store_path, work / f"train_{spec}", FitConfig(strategy="full", steps=steps, width=width, depth=depth,
                                                          log_every=steps, checkpoint_every=1e9, device=device),
            overwrite=True, progress=False)
    cfg = ModelConfig(in_dim=store.ndim, out_dim=store.channels, width=width, depth=depth)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = (torch.from_numpy(a).to(device) for a in store.load_all())
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        float(loss.detach())  # one sync per step, as the fit loop does
    raw = steps / (time.perf_counter() - t0)
    rows = [{"model": f"SIREN {spec}", "batch": store.n_samples, "loop": "intstream fit (strategy full)",
             "steps": steps, "steps_per_s": m["steps_per_second"], "vs_raw": m["steps_per_second"] / raw},
            {"model": f"SIREN {spec}", "batch": store.n_samples, "loop": "raw torch step",
             "steps": steps, "steps_per_s": raw, "vs_raw": 1.0}]
    progress(f"  {spec} training: fit {m['steps_per_second']:.2f} steps/s, raw {raw:.2f} steps/s")
    return rows


def run(args) -> tuple[list[dict], list[dict]]:
    from intstream.testing import make_image_store

    scoring, training = [], []
    with tempfile.TemporaryDirectory(prefix="intstream-scoring-") as tmp:
        work = Path(tmp)
        warm_up(work, args.device)
        chunks = None if args.chunk is None else (args.chunk, args.chunk)
        big = make_image_store(work / "score.zarr", (args.pixels, args.pixels), chunks=chunks)
        small = make_image_store(work / "train.zarr", (args.train_px, args.train_px))
        for spec in args.model:
            progress(f"SIREN {spec} ...")
            scoring += scoring_rows(big, spec, device=args.device, repeats=args.repeats)
            training += training_rows(small, spec, work, steps=args.train_steps, device=args.device)
    return scoring, training


def plot(scoring: list[dict], path: Path) -> None:
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in scoring))
    paths = list(dict.fromkeys(r["path"] for r in scoring))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for j, name in enumerate(DTYPES):
            vals = [next((r["samples_per_s"] for r in scoring if r["model"] == model and r["path"] == p
                          and r["dtype"] == name), 0) / 1e3 for p in paths]
            ax.barh([i + 0.4 * j for i in range(len(paths))], vals, height=0.4, label=name)
        ax.set_yticks([i + 0.2 for i in range(len(paths))], [p.split(" (")[0] for p in paths])
        ax.set_xlabel("thousand samples / s")
        ax.set_title(model)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pixels", type=int, default=2048, help="edge of the scored image (2048: 4 MP)")
    ap.add_argument("--chunk", type=int, default=None, help="chunk edge (default: the store's, 1024)")
    ap.add_argument("--model", action="append", help="DEPTHxWIDTH (repeatable; default 6x256 and 4x64)")
    ap.add_argument("--train-px", type=int, default=128, help="edge of the training image (whole image per step)")
    ap.add_argument("--train-steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per scoring path (best is kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="output stem (default: benchmarks/results/scoring; smoke: none)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    args.model = args.model or ["6x256", "4x64"]
    if args.smoke:
        args.pixels, args.chunk, args.model, args.train_px, args.train_steps = 128, 64, ["3x32", "2x16"], 16, 5
    # The fit loop uses every core (fit._setup_torch); the raw paths must too, to compare.
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    scoring, training = run(args)
    setting = (f"scoring: {args.pixels}² RGB store, chunks {args.chunk or 1024}², top 20%, best of {args.repeats}; "
               f"training: {args.train_px}² batch, {args.train_steps} steps; device {args.device}")
    out = results_path(args.out, "scoring", args.smoke)
    if out is None:
        print(markdown(rounded(scoring)) + "\n" + markdown(rounded(training)))
    else:
        write_table(out.with_suffix(".md"), f"Scoring and training throughput ({setting})", rounded(scoring),
                    rounded(training))
        out.with_suffix(".json").write_text(json.dumps({"setting": setting, "scoring": scoring, "training": training}))
        plot(scoring, out.with_suffix(".png"))
    progress(f"done in {time.perf_counter() - t0:.0f} s" + (f" -> {out.with_suffix('.md')}" if out else ""))


if __name__ == "__main__":
    main()
