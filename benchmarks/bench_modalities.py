"""The paper's Table 1 on audio and SDF, CPU-scaled: teachers side by side.

The image part of the table is ``bench_teachers.py``. Here every method trains the same
SIREN for the same T from the same seed on

* audio: the five LibriSpeech clips in ``../shared/data/librispeech``, each cropped to
  its first ``--seconds`` (written as a 16-bit WAV in a temporary folder and ingested:
  the paper fits 2 s; 1 s keeps the table to minutes on 2 cores);
* SDF: the bunny and teapot meshes ingested at ``--resolution``³.

Per signal and method: training seconds, steps/s, the training PSNR of the final
weights, the metrics of `intstream.evaluate.evaluate` on the final weights (audio: PSNR
and SNR; SDF: IoU), time-to-target where the target is ``full``'s final training PSNR,
and the ratios to ``full``. A plot shows PSNR against training time for the first clip
and the first shape.

    python benchmarks/bench_modalities.py                  # results/modalities.{md,json,png}; ~20 min
    python benchmarks/bench_modalities.py --smoke          # seconds, for CI
    python benchmarks/bench_modalities.py --only audio --seconds 2 --steps 5000   # the paper's protocol
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

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
    write_table,
)

DEFAULT_METHODS = ["full=full", "random=random", "int=int", "intstream=intstream"]


def crop_audio(src: Path, seconds: float, work: Path) -> Path:
    """The first ``seconds`` of ``src`` as a 16-bit WAV (``seconds <= 0``: the whole clip)."""
    import soundfile as sf

    info = sf.info(str(src))
    frames = info.frames if seconds <= 0 else min(info.frames, int(round(seconds * info.samplerate)))
    data, rate = sf.read(str(src), frames=frames, dtype="int16", always_2d=True)
    out = work / f"{src.stem}_{frames}.wav"
    sf.write(str(out), data, rate, subtype="PCM_16")
    return out


def audio_stores(args, work: Path) -> list[tuple[str, str]]:
    from intstream.ingest import ingest

    clips = sorted((DATA / "librispeech").glob("*.flac"))[: args.clips]
    return [(f"speech{c.stem}", ingest(crop_audio(c, args.seconds, work), work / f"{c.stem}.zarr",
                                       overwrite=True, progress=False)["store"]) for c in clips]


def sdf_stores(args, work: Path) -> list[tuple[str, str]]:
    from intstream.ingest import ingest

    out = []
    for name in args.meshes:
        m = ingest(DATA / "meshes" / f"{name}.obj", work / f"{name}.zarr", kind="sdf", resolution=args.resolution,
                   overwrite=True, progress=False)
        out.append((name, m["store"]))
    return out


def run(args) -> dict[str, list[dict]]:
    methods = [parse_method(m) for m in (args.method or DEFAULT_METHODS)]
    base = {"steps": args.steps, "width": args.width, "depth": args.depth, "log_every": args.log_every,
            "seed": args.seed, "lr": args.lr}
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="intstream-modalities-") as tmp:
        work = Path(tmp)
        warm_up(work)
        for modality, make in (("audio", audio_stores), ("sdf", sdf_stores)):
            if args.only and modality != args.only:
                continue
            rows[modality] = []
            for signal, store in make(args, work):
                rows[modality] += compare_methods(store, methods, base, work, signal)
    return rows


def plot(rows: dict[str, list[dict]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(7 * len(rows), 4.5), squeeze=False)
    for ax, (modality, rs) in zip(axes[0], rows.items()):
        first = rs[0]["signal"]
        psnr_time_axes(ax, [r for r in rs if r["signal"] == first], f"{modality}: {first}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["audio", "sdf"], help="one modality")
    ap.add_argument("--clips", type=int, default=5, help="LibriSpeech clips (first N)")
    ap.add_argument("--seconds", type=float, default=1.0, help="audio crop, seconds (0: whole clips)")
    ap.add_argument("--meshes", nargs="+", default=["bunny", "teapot"])
    ap.add_argument("--resolution", type=int, default=48, help="SDF grid edge")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=None, help="default: the kind's (paper: 1e-4 audio and SDF)")
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", action="append", help="label=strategy[:key=value...] (repeatable)")
    ap.add_argument("--out", help="output stem (default: benchmarks/results/modalities; smoke: none)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        args.clips, args.seconds, args.meshes, args.resolution = 1, 0.05, ["teapot"], 12
        args.width, args.depth, args.steps, args.log_every = 16, 3, 20, 5
    t0 = time.perf_counter()
    rows = run(args)
    setting = (f"SIREN {args.depth}x{args.width}, T={args.steps}, seed {args.seed}; audio: {args.clips} LibriSpeech "
               f"clips, first {args.seconds or 'all'} s; SDF: {', '.join(args.meshes)} at {args.resolution}^3")
    tables = []
    for modality, rs in rows.items():
        tables += [summarise_methods(rs, modality), rounded(rs)]
    text_rows = [r for rs in rows.values() for r in rs]
    out = results_path(args.out, "modalities", args.smoke)
    if out is None:
        print("\n".join(markdown(t) for t in tables))
    else:
        write_table(out.with_suffix(".md"), f"Teachers on audio and SDF ({setting})", *tables)
        out.with_suffix(".json").write_text(json.dumps({"setting": setting, "rows": text_rows}))
        plot(rows, out.with_suffix(".png"))
    progress(f"done in {time.perf_counter() - t0:.0f} s" + (f" -> {out.with_suffix('.md')}" if out else ""))


if __name__ == "__main__":
    main()
