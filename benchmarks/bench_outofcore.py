"""Out-of-core scaling: memory and time per sample of ingest, fit and eval as signals grow.

For each size it generates, in a temporary folder (deleted afterwards, one size at a time):

* images of ``--sizes`` edge pixels (RGB uint8; 4096 = 16 MP ... 32768 = 1.07 GP, 3 GB
  raw), written tile by tile as a BigTIFF with `intstream.testing.write_tiled_tiff`
  (``--source store`` writes the store directly with `make_image_store` and skips ingest);
* ``--audio-seconds`` of generated 16 kHz mono FLAC (`intstream.testing.write_audio`);

then runs each stage as a child process, measuring its wall time and its own peak RSS
(`_common.peak_rss_of`):

* ``intstream ingest`` -> MB/s of raw signal;
* ``intstream fit`` with ``--out-of-core`` (rounds over chunks), a fixed
  number of steps and a small SIREN, so it measures I/O and rounds rather than the
  network: rounds/s and samples scored/s (rounds from the checkpoint, chunks per round
  from `intstream.teach.rounds.plan_round_size`);
* ``intstream eval --metrics psnr`` (no decode) -> MB/s, for signals up to
  ``--eval-max-samples`` (the forward pass over every sample is the slow part: a 1 GP
  image takes ~10 min on 2 cores).

The issue's requirement: fit on a >= 1-gigapixel store with peak RSS < 3 GiB; the script
exits 1 if any fit exceeds ``--rss-limit``.

    python benchmarks/bench_outofcore.py                 # results/outofcore.{md,json,png}; ~10-15 min, ~6 GB of /tmp
    python benchmarks/bench_outofcore.py --smoke         # seconds, for CI
    python benchmarks/bench_outofcore.py --sizes 32768 --no-audio --tmp /big/disk
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    intstream_cmd,
    manifest_of,
    markdown,
    peak_rss_of,
    progress,
    pyplot,
    results_path,
    rounded,
    write_table,
)


def _size_arg(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("b")
    return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)


def make_source(case: dict, tmp: Path, opts) -> tuple[Path, str]:
    """Generate the case's source file (or store, with ``--source store``); return it and a description."""
    from intstream.testing import make_image_store, write_audio, write_tiled_tiff

    if case["kind"] == "audio":
        src = write_audio(tmp / "long.flac", case["seconds"], 16000, 1, "PCM_16", seed=0)
        return src, f"{case['seconds']:g} s × 1 ch @ 16 kHz, int16"
    n = case["edge"]
    what = f"{n}×{n}×3 uint8 ({n * n / 1e6:.3g} MP)"
    if opts.source == "store":
        chunks = None if opts.image_chunks is None else (opts.image_chunks,) * 2
        return make_image_store(tmp / "signal.zarr", (n, n), chunks=chunks, overwrite=True), what
    return write_tiled_tiff(tmp / "big.tif", (n, n), 3, "uint8", tile=(512, 512), seed=0, bigtiff=True), what


def bench_case(case: dict, tmp: Path, opts) -> dict:
    """Generate one signal, run ingest -> fit -> eval as children, delete everything; one table row.

    ``opts`` carries steps, width, depth, memory_budget, device, source, image_chunks,
    audio_chunks and eval_max_samples (see `main`'s options).
    """
    from intstream.checkpoint import load_checkpoint
    from intstream.teach.rounds import plan_round_size
    from intstream.store import open_store

    cli = intstream_cmd()
    t0 = time.perf_counter()
    src, what = make_source(case, tmp, opts)
    progress(f"  generated {src.name} in {time.perf_counter() - t0:.1f} s")
    row = {"case": case["name"], "signal": what, "samples": None, "signal_mb": None}
    try:
        if src.suffix == ".zarr":
            store_path = src
            row.update(ingest_s=None, ingest_mb_s=None, ingest_ns_per_sample=None, ingest_rss_mib=None)
        else:
            store_path = tmp / "signal.zarr"
            chunks = opts.audio_chunks if case["kind"] == "audio" else opts.image_chunks
            extra = [] if chunks is None else ["--chunks", ",".join([str(chunks)] * (1 if case["kind"] == "audio" else 2))]
            sec, rss, proc = peak_rss_of(cli + ["ingest", str(src), "-o", str(store_path), *extra])
            m = manifest_of(proc)
            row.update(ingest_s=sec, ingest_mb_s=m["bytes"] / 1e6 / sec,
                       ingest_ns_per_sample=1e9 * sec / math.prod(m["shape"]), ingest_rss_mib=rss)
            src.unlink()  # free the disk before the fit
            progress(f"  ingest: {sec:.1f} s, {row['ingest_mb_s']:.0f} MB/s, peak RSS {rss:.0f} MiB")
        store = open_store(store_path)
        row.update(samples=store.n_samples, signal_mb=store.nbytes / 1e6)

        run_dir = tmp / "run"
        sec, rss, proc = peak_rss_of(cli + [
            "fit", str(store_path), "-o", str(run_dir), "--overwrite", "--steps", str(opts.steps),
            "--width", str(opts.width), "--depth", str(opts.depth), "--memory-budget", str(opts.memory_budget),
            "--out-of-core", "--log-every", str(opts.steps), "--device", opts.device, "--seed", "0"])
        m = manifest_of(proc)
        rounds = int(load_checkpoint(run_dir)["teacher"]["round"])
        round_chunks, _ = plan_round_size(store, opts.memory_budget, opts.width, opts.depth)
        round_chunks = min(round_chunks, len(store.chunk_slices()))
        scored = rounds * round_chunks * math.prod(store.chunks)  # (full-size chunks; exact for these sizes)
        train = m["train_seconds"]
        row.update(out_of_core=m["out_of_core"], fit_s=sec, train_s=train, rounds=rounds,
                   rounds_per_s=rounds / train, scored_per_s=scored / train,
                   fit_ns_per_scored=1e9 * train / scored, fit_rss_mib=rss)
        progress(f"  fit: {sec:.1f} s ({train:.1f} s training), {rounds} rounds of {round_chunks} chunks, "
                 f"{scored / train / 1e6:.2f} M samples scored/s, peak RSS {rss:.0f} MiB")

        if store.n_samples <= opts.eval_max_samples:
            sec, rss, proc = peak_rss_of(cli + ["eval", str(run_dir), "--store", str(store_path), "--metrics", "psnr",
                                                "--device", opts.device])
            m = manifest_of(proc)
            row.update(eval_s=sec, eval_mb_s=m.get("mb_per_s"), eval_ns_per_sample=1e9 * m["score_seconds"] / store.n_samples,
                       eval_rss_mib=rss)
            progress(f"  eval: {sec:.1f} s, {m.get('mb_per_s')} MB/s, peak RSS {rss:.0f} MiB")
        else:
            row.update(eval_s=None, eval_mb_s=None, eval_ns_per_sample=None, eval_rss_mib=None)
    finally:
        for p in (tmp / "big.tif", tmp / "long.flac", tmp / "signal.zarr", tmp / "run"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return row


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for kind, marker in (("image", "o"), ("audio", "s")):
        rs = [r for r in rows if r["case"].startswith(kind)]
        if not rs:
            continue
        x = [r["samples"] for r in rs]
        for stage, ls in (("ingest", "-"), ("fit", "--"), ("eval", ":")):
            y = [r.get(f"{stage}_rss_mib") for r in rs]
            if any(v is not None for v in y):
                a.plot(x, y, marker=marker, ls=ls, label=f"{kind} {stage}")
        for key, ls, lab in (("ingest_ns_per_sample", "-", "ingest"), ("fit_ns_per_scored", "--", "fit (per scored)"),
                             ("eval_ns_per_sample", ":", "eval")):
            y = [r.get(key) for r in rs]
            if any(v is not None for v in y):
                b.plot(x, y, marker=marker, ls=ls, label=f"{kind} {lab}")
    for ax, ylabel in ((a, "peak RSS (MiB)"), (b, "ns per sample")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("signal samples")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    a.set_title("peak RSS of each stage (child process)")
    b.set_title("time per sample")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[4096, 8192, 16384, 32768], help="image edges (px)")
    ap.add_argument("--audio-seconds", type=float, default=3600.0)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--source", choices=["tiff", "store"], default="tiff",
                    help="tiff: BigTIFF + intstream ingest (measures ingest); store: make_image_store, no ingest")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--memory-budget", type=_size_arg, default="1G", help="fit's --memory-budget (the whole process; --out-of-core forces rounds)")
    ap.add_argument("--image-chunks", type=int, default=None, help="chunk edge (default: the store's, 1024)")
    ap.add_argument("--audio-chunks", type=int, default=None, help="audio chunk (default: the store's, 2^20)")
    ap.add_argument("--eval-max-samples", type=float, default=7e7, help="skip eval above this many samples")
    ap.add_argument("--rss-limit", type=_size_arg, default="3G", help="fail if a fit's peak RSS exceeds this")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tmp", type=Path, default=None, help="where to generate signals (default: a temp folder)")
    ap.add_argument("--out", help="output stem (default: benchmarks/results/outofcore; smoke: none)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.audio_seconds, args.steps, args.width, args.depth = [256, 512], 10.0, 20, 16, 3
        args.memory_budget, args.image_chunks, args.audio_chunks = 1 << 30, 128, 16384
        args.eval_max_samples = 70000  # eval the 256² image only; the others take the skip path
    cases = [{"name": f"image {n}²", "kind": "image", "edge": n} for n in args.sizes]
    if not args.no_audio:
        secs = args.audio_seconds
        cases.append({"name": f"audio {secs / 3600:g} h" if secs >= 3600 else f"audio {secs:g} s", "kind": "audio",
                      "seconds": secs})

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="intstream-outofcore-", dir=args.tmp))
    rows = []
    try:
        for case in cases:
            progress(f"{case['name']} ...")
            rows.append(bench_case(case, tmp, args))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    setting = (f"fit: SIREN {args.depth}x{args.width}, {args.steps} steps, --memory-budget {args.memory_budget >> 20} MiB, "
               f"device {args.device}; eval: PSNR only, up to {args.eval_max_samples:.0f} samples")
    out = results_path(args.out, "outofcore", args.smoke)
    if out is None:
        print(markdown(rounded(rows)))
    else:
        write_table(out.with_suffix(".md"), f"Out-of-core scaling ({setting})", rounded(rows))
        out.with_suffix(".json").write_text(json.dumps({"setting": setting, "rows": rows}))
        plot(rows, out.with_suffix(".png"))
    progress(f"done in {time.perf_counter() - t0:.0f} s" + (f" -> {out.with_suffix('.md')}" if out else ""))
    over = [r["case"] for r in rows if r["fit_rss_mib"] > args.rss_limit / (1 << 20)]
    not_ooc = [r["case"] for r in rows if not r["out_of_core"]]
    if over or not_ooc:
        progress(f"fit over the {args.rss_limit >> 20} MiB RSS limit: {over}; not out of core: {not_ooc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
