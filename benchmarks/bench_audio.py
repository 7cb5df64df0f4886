"""Audio defaults on every LibriSpeech clip: SNR against training time (issue: SNR >= 20 dB
within 5 minutes on 2 CPU cores).

Per clip, the whole utterance is ingested and fitted by the CLI with the defaults of
``kind=audio`` (``intstream fit STORE``, nothing else but ``--time-budget``), exported to
int8 and judged by ``intstream eval`` (SNR on the waveform, PSNR the paper's way, LSD,
PESQ/STOI when installed). SNR at 60 s and 300 s of training comes from the run's log:
the logged training PSNR (measured over every sample) plus the clip's constant offset
between eval's SNR and the final training PSNR (the same MSE on two scales), so it is
the SNR the weights had at that time, not a separate run. Beside each: Ogg/Opus (through
soundfile/libsndfile) at the largest size not above the int8 weights' bytes, with its SNR
and PESQ, the codec a user would otherwise reach for.

    python benchmarks/bench_audio.py                 # results/audio.{md,json}; ~5 min a clip
    python benchmarks/bench_audio.py --smoke         # seconds, for CI
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, intstream_cmd, manifest_of, peak_rss_of, progress, read_log, save_rows  # noqa: E402


def snr_log(log: list[dict], offset: float) -> list[tuple[float, float]]:
    return [(r["train_seconds"], r["psnr"] + offset) for r in log if r.get("psnr") is not None]


def at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    last = None
    for t, v in curve:
        if t > seconds:
            break
        last = v
    return last


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    return next((t for t, v in curve if v >= target), None)


def opus_at_bytes(clip: Path, max_bytes: int, work: Path) -> dict:
    """The clip encoded to Ogg/Opus by libsndfile (through soundfile) at the largest size not
    above ``max_bytes`` (bisection on its compression level), decoded and scored like eval:
    SNR on the waveform, PESQ/STOI. Opus is perceptual, so its waveform SNR understates how
    it sounds; PESQ is the fairer figure. Opus's 48 kHz resampling keeps the length and
    adds no delay through libsndfile (checked: best lag 0)."""
    import numpy as np
    import soundfile as sf

    from intstream.metrics import snr_db, speech_scores

    x, rate = sf.read(str(clip), dtype="float64")
    out = work / f"{clip.stem}.ogg"
    best, lo, hi = None, 0.0, 1.0  # compression level: 0 = largest file, 1 = smallest
    for _ in range(12):
        mid = (lo + hi) / 2
        sf.write(str(out), x, rate, format="OGG", subtype="OPUS", compression_level=mid)
        size = out.stat().st_size
        if size <= max_bytes:
            best, hi = (mid, size), mid
        else:
            lo = mid
    if best is None:
        return {"opus_bytes": None, "opus_snr": None, "opus_pesq": None}
    sf.write(str(out), x, rate, format="OGG", subtype="OPUS", compression_level=best[0])
    y, _ = sf.read(str(out), dtype="float64")
    n = min(len(x), len(y))
    scores, _ = speech_scores(y[:n], x[:n], rate, ("pesq",))
    return {"opus_bytes": best[1], "opus_snr": snr_db(float(np.sum(x[:n] ** 2)), float(np.sum((y[:n] - x[:n]) ** 2))),
            "opus_pesq": scores.get("pesq")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-budget", type=float, default=300.0)
    ap.add_argument("--clips", type=int, default=5)
    ap.add_argument("--extra", default="", help="extra fit options, e.g. '--capacity 1.0'")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.time_budget, args.clips = 3.0, 1
    import soundfile as sf

    cli = intstream_cmd()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for clip in sorted((DATA / "librispeech").glob("*.flac"))[: args.clips]:
            store, run, wts = work / f"{clip.stem}.zarr", work / f"{clip.stem}.run", work / f"{clip.stem}.st"
            ing = manifest_of(peak_rss_of(cli + ["ingest", str(clip), "-o", str(store)])[2])
            secs, rss, proc = peak_rss_of(cli + ["fit", str(store), "-o", str(run), "--time-budget",
                                                 str(args.time_budget), "--log-every", "50", "-q",
                                                 *args.extra.split()])
            fit = manifest_of(proc)
            exp = manifest_of(peak_rss_of(cli + ["export-weights", str(run), "-o", str(wts), "--dtype", "int8"])[2])
            ev = manifest_of(peak_rss_of(cli + ["eval", str(wts), "--store", str(store), "--metrics", "all"])[2])
            m = ev["metrics"]
            log = read_log(run)
            curve = snr_log(log, m["snr"] - fit["train_psnr"])
            duration = sf.info(str(clip)).duration
            rows.append({
                "clip": clip.stem, "seconds_audio": round(duration, 2),
                "params": fit["params"],
                "params_per_sample": round(fit["params"] / ing["shape"][0], 3),
                "steps": fit["steps"], "total_steps": fit["total_steps"], "train_seconds": fit["train_seconds"],
                "snr_60s": at(curve, 60.0), "snr_300s": at(curve, 300.0), "snr": m["snr"],
                "seconds_to_20dB": first_reach(curve, 20.0), "psnr_paper": m["psnr"], "lsd": m.get("lsd"),
                "pesq": m.get("pesq"), "stoi": m.get("stoi"), "int8_bytes": exp["bytes"],
                "kbit_per_s": round(8 * exp["bytes"] / duration / 1000, 1),
                "peak_rss_mib": round(rss, 1),
                **opus_at_bytes(clip, exp["bytes"], work),
            })
            progress(f"{clip.stem}: SNR {m['snr']:.2f} dB after {fit['train_seconds']:.0f} s")
    rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    save_rows(args.out, "audio", args.smoke, f"Audio defaults on LibriSpeech (time budget {args.time_budget:g} s,"
              f" int8 weights, {args.extra or 'no extra options'})", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
