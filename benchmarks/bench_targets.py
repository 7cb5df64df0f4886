"""Target scaling: the same fits with targets in [0, 1] (the paper's) and in [-1, 1].

For each signal, ingest it twice (``--targets unit`` and ``--targets signed``), fit the
same SIREN from the same seed with full batch (every sample, every step: no teacher in
the way), and score the final weights with ``intstream eval``, whose PSNR is always on
the signal's own [0, 1] scale (SNR for audio), so the two columns compare directly.
This is the benchmark that chose `intstream.normalize.DEFAULT_TARGETS`.

    python benchmarks/bench_targets.py            # the table in BENCHMARKS.md (~5 min on 2 idle cores)
    python benchmarks/bench_targets.py --smoke    # seconds, for CI
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
from _common import DATA, machine, progress, results_path, warm_up, write_table  # noqa: E402

from intstream.evaluate import evaluate  # noqa: E402
from intstream.fit import FitConfig, fit  # noqa: E402
from intstream.ingest import ingest  # noqa: E402


def image_crop(path: Path, size: tuple[int, int], work: Path) -> Path:
    """A centre crop of ``size`` (w, h), no resampling: real high-frequency detail."""
    im = Image.open(path).convert("RGB")
    w, h = size
    left, top = (im.width - w) // 2, (im.height - h) // 2
    out = work / f"{path.parent.name}_{path.stem}_{w}x{h}.png"
    im.crop((left, top, left + w, top + h)).save(out)
    return out


def audio_excerpt(path: Path, seconds: float, work: Path) -> Path:
    import soundfile as sf

    data, rate = sf.read(path, dtype="int16")
    out = work / f"{path.stem}_{seconds:g}s.wav"
    sf.write(out, data[: int(seconds * rate)], rate, subtype="PCM_16")
    return out


def array_field(work: Path, n: int) -> Path:
    """A smooth float field with a few sharp features (the kind ``array`` covers)."""
    y, x = np.mgrid[0:n, 0:n] / n
    f = np.sin(9 * x) * np.cos(7 * y) + 0.5 * (np.hypot(x - 0.5, y - 0.4) < 0.2) + 3.0
    out = work / f"field_{n}.npy"
    np.save(out, f.astype(np.float32))
    return out


def run(args) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        warm_up(work)
        signals = [image_crop(DATA / "kodak" / f"kodim{i:02d}.png", (args.px, args.px), work) for i in args.kodak]
        signals += [image_crop(DATA / "div2k" / f"{i:02d}.png", (args.px, args.px), work) for i in args.div2k]
        if args.audio:
            signals.append(audio_excerpt(DATA / "librispeech" / "00.flac", args.audio, work))
        if args.array:
            signals.append(array_field(work, args.array))
        for src in signals:
            row = {"signal": src.stem}
            for targets in ("unit", "signed"):
                store = ingest(src, work / f"{src.stem}_{targets}.zarr", targets=targets, overwrite=True)
                kind = store["kind"]
                opts = dict(strategy="full", steps=args.steps, width=args.width, depth=args.depth, seed=0,
                            log_every=max(1, args.steps // 10), checkpoint_every=1e9)
                if kind == "audio":
                    opts.update(first_omega0=args.audio_omega, lr=1e-4)
                run_dir = work / f"{src.stem}_{targets}.run"
                m = fit(store["store"], run_dir, FitConfig(**opts), overwrite=True, progress=False)
                ev = evaluate(run_dir, store=store["store"], device="cpu", progress=False)["metrics"]
                key = "snr" if kind == "audio" else "psnr"
                row["kind"], row["metric"] = kind, key
                row[f"{targets}_db"] = round(ev[key], 2)
                row[f"{targets}_seconds"] = round(m["train_seconds"], 1)
                progress(f"{src.stem} {targets}: {key} {ev[key]:.2f} dB in {m['train_seconds']:.1f} s")
            row["signed_minus_unit_db"] = round(row["signed_db"] - row["unit_db"], 2)
            rows.append(row)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kodak", type=int, nargs="*", default=[5, 12])
    ap.add_argument("--div2k", type=int, nargs="*", default=[0])
    ap.add_argument("--px", type=int, default=96, help="square crop edge")
    ap.add_argument("--audio", type=float, default=0.5, help="seconds of LibriSpeech 00 (0: none)")
    ap.add_argument("--audio-omega", type=float, default=3000.0, help="first-layer omega_0 for the audio fits")
    ap.add_argument("--array", type=int, default=96, help="edge of a generated float field (0: none)")
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", help="results stem (default benchmarks/results/targets; smoke: none)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.kodak, args.div2k, args.px, args.audio, args.array = [5], [], 24, 0.05, 16
        args.width, args.depth, args.steps = 16, 3, 20
    t0 = time.perf_counter()
    rows = run(args)
    gains = [r["signed_minus_unit_db"] for r in rows if r["kind"] == "image"]
    setting = (f"eval's PSNR on the [0, 1] scale, SNR for audio; full batch, model from --model auto, SIREN {args.depth}x{args.width}, T={args.steps}, seed 0, {args.px}² centre crops; "
               f"{machine()}")
    out = results_path(args.out, "targets", args.smoke)
    summary = [{"images": len(gains), "mean_gain_db_signed_vs_unit": round(statistics.mean(gains), 2) if gains else None}]
    if out is None:
        print(json.dumps({"rows": rows, "summary": summary}))
        return
    write_table(out.with_suffix(".md"), f"Target scaling ({setting})", rows, summary)
    out.with_suffix(".json").write_text(json.dumps(rows))
    print(f"done in {time.perf_counter() - t0:.0f} s -> {out.with_suffix('.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
