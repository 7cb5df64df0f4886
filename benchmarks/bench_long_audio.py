"""Long audio through the whole pipeline, out of core with audio's default tiled model.

Two generated signals, each taken through the CLI as a user would:
``ingest -> fit --out-of-core --time-budget -> export-weights --dtype int8 -> eval --decode x.flac``

``hour``
    ``--hours`` (default 1) of 16 kHz mono speech: the LibriSpeech clips in ../shared/data
    concatenated and repeated.
``stereo``
    ``--stereo-seconds`` of 44.1 kHz stereo: clips 00, 02, 04 in the left channel and 01,
    03 in the right (different speech per channel), resampled from 16 kHz with
    ``scipy.signal.resample_poly``, repeated to length.

Per signal: SNR of the decoded FLAC per channel against the source (the headline), the
paper's PSNR from eval, int8 weight bytes and kbit/s beside the source FLAC's, training
seconds per audio second, steps per second (of the planned T), peak RSS of ``fit`` against its
``--memory-budget``, and Ogg/Opus (libsndfile through soundfile) at the same kbit/s as the
weights (44.1 kHz resampled to Opus's 48 kHz and back; compression level bisected on the first minute, then the whole signal encoded
once), scored the same way. The fits are bounded by ``--time-budget``: an hour of audio
takes far longer than that to fit on 2 cores, so the table also gives the SNR the clips
reach per second of training (results/audio.md) for the extrapolation.

    python benchmarks/bench_long_audio.py                  # results/long_audio.{md,json}, ~25 min
    python benchmarks/bench_long_audio.py --smoke          # seconds, for CI
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DATA, intstream_cmd, manifest_of, peak_rss_of, progress, save_rows  # noqa: E402

CLIP_RATE = 16000
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def _clips() -> list[np.ndarray]:
    import soundfile as sf

    out = []
    for p in sorted((DATA / "librispeech").glob("*.flac")):
        x, rate = sf.read(str(p), dtype="float32")
        if rate != CLIP_RATE:
            raise SystemExit(f"{p}: expected {CLIP_RATE} Hz, got {rate}")
        out.append(x)
    return out


def _repeat(x: np.ndarray, n: int) -> np.ndarray:
    return np.resize(x, (n,) + x.shape[1:])  # np.resize repeats the data cyclically


def make_hour(path: Path, hours: float) -> Path:
    import soundfile as sf

    sf.write(str(path), _repeat(np.concatenate(_clips()), int(hours * 3600 * CLIP_RATE)), CLIP_RATE, subtype="PCM_16")
    return path


def make_stereo(path: Path, seconds: float, rate: int = 44100) -> Path:
    import soundfile as sf
    from scipy.signal import resample_poly

    clips = _clips()
    n = int(seconds * rate)
    left = resample_poly(np.concatenate(clips[0::2]), rate // 100, CLIP_RATE // 100)
    right = resample_poly(np.concatenate(clips[1::2]), rate // 100, CLIP_RATE // 100)
    x = np.stack([_repeat(left, n), _repeat(right, n)], axis=1)
    sf.write(str(path), np.clip(x, -1, 1), rate, subtype="PCM_16")
    return path


def snr_per_channel(ref: np.ndarray, got: np.ndarray) -> list[float]:
    """10 log10(sum x^2 / sum (y - x)^2) per channel, in float64."""
    from intstream.metrics import snr_db

    ref, got = np.atleast_2d(ref.T).T.astype(np.float64), np.atleast_2d(got.T).T.astype(np.float64)
    n = min(len(ref), len(got))
    return [round(snr_db(float(np.sum(ref[:n, c] ** 2)), float(np.sum((got[:n, c] - ref[:n, c]) ** 2))), 2)
            for c in range(ref.shape[1])]


def opus_at_rate(src: Path, kbps: float, work: Path, probe_seconds: float = 60.0) -> dict:
    """Ogg/Opus at the largest compression setting whose bitrate on the first
    ``probe_seconds`` does not exceed ``kbps``, then the whole signal at that setting."""
    import soundfile as sf

    from scipy.signal import resample_poly

    x, rate = sf.read(str(src), dtype="float32", always_2d=True)
    ref, src_rate = x, rate
    if rate not in OPUS_RATES:  # e.g. 44.1 kHz: Opus takes 48 kHz, scored back at the source rate
        g = math.gcd(48000, rate)
        x, rate = resample_poly(x, 48000 // g, rate // g, axis=0).astype(np.float32), 48000
    probe, out = x[: int(probe_seconds * rate)], work / f"{src.stem}.ogg"
    best, lo, hi = None, 0.0, 1.0  # compression level: 0 = largest file, 1 = smallest
    for _ in range(10):
        mid = (lo + hi) / 2
        sf.write(str(out), probe, rate, format="OGG", subtype="OPUS", compression_level=mid)
        if 8 * out.stat().st_size / (len(probe) / rate) / 1000 <= kbps:
            best, hi = mid, mid
        else:
            lo = mid
    if best is None:
        return {"opus_kbit_per_s": None, "opus_snr_db": None}
    sf.write(str(out), x, rate, format="OGG", subtype="OPUS", compression_level=best)
    y, _ = sf.read(str(out), dtype="float32", always_2d=True)
    if rate != src_rate:
        g = math.gcd(48000, src_rate)
        y = resample_poly(y, src_rate // g, 48000 // g, axis=0)
    return {"opus_kbit_per_s": round(8 * out.stat().st_size / (len(x) / rate) / 1000, 1),
            "opus_snr_db": snr_per_channel(ref, y)}


def run_signal(name: str, src: Path, work: Path, args) -> dict:
    import soundfile as sf

    cli = intstream_cmd()
    store, run, wts, dec = (work / f"{name}{s}" for s in (".zarr", ".run", ".st", ".decoded.flac"))
    peak_rss_of(cli + ["ingest", str(src), "-o", str(store), "-q"])
    fit_s, fit_rss, proc = peak_rss_of(cli + ["fit", str(store), "-o", str(run), "--out-of-core", "-q",
                                              "--time-budget", str(args.time_budget[name]),
                                              "--memory-budget", str(args.memory_budget), "--log-every", "100"])
    fit = manifest_of(proc)
    exp = manifest_of(peak_rss_of(cli + ["export-weights", str(run), "-o", str(wts), "--dtype", "int8", "-q"])[2])
    ev_s, ev_rss, proc = peak_rss_of(cli + ["eval", str(wts), "--store", str(store), "--decode", str(dec), "-q"])
    ev = manifest_of(proc)
    info = sf.info(str(src))
    ref, _ = sf.read(str(src), dtype="float32", always_2d=True)
    got, rate = sf.read(str(dec), dtype="float32", always_2d=True)
    if rate != info.samplerate or got.shape != ref.shape:
        raise SystemExit(f"{name}: decoded {got.shape} at {rate} Hz, source {ref.shape} at {info.samplerate} Hz")
    seconds = info.duration
    kbps = 8 * exp["bytes"] / seconds / 1000
    row = {
        "signal": name, "audio_seconds": round(seconds, 1), "rate_hz": info.samplerate, "channels": info.channels,
        "params": fit["params"], "params_per_value": round(fit["params"] / (info.frames * info.channels), 3),
        "steps": fit["steps"], "train_seconds": round(fit["train_seconds"], 1),
        "train_s_per_audio_s": round(fit["train_seconds"] / seconds, 3),
        "total_steps": fit["total_steps"], "steps_per_s": fit["steps_per_second"],
        "snr_db_per_channel": snr_per_channel(ref, got), "eval_snr_db": ev["metrics"].get("snr"),
        "eval_psnr_paper": ev["metrics"].get("psnr"), "int8_bytes": exp["bytes"], "kbit_per_s": round(kbps, 1),
        "source_flac_kbit_per_s": round(8 * src.stat().st_size / seconds / 1000, 1),
        "fit_peak_rss_mib": round(fit_rss), "memory_budget_mib": args.memory_budget >> 20,
        "eval_decode_seconds": round(ev_s, 1), "eval_peak_rss_mib": round(ev_rss), "out_of_core": fit.get("out_of_core"),
        **opus_at_rate(src, kbps, work),
    }
    progress(f"{name}: SNR {row['snr_db_per_channel']} dB after {row['train_seconds']} s, {row['kbit_per_s']} kbit/s")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--stereo-seconds", type=float, default=120.0)
    ap.add_argument("--hour-time", type=float, default=600.0, help="training seconds for the long signal")
    ap.add_argument("--stereo-time", type=float, default=300.0, help="training seconds for the stereo signal")
    ap.add_argument("--memory-budget", type=int, default=2 << 30, help="bytes, for fit")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.hours, args.stereo_seconds, args.hour_time, args.stereo_time = 20 / 3600, 5.0, 3.0, 3.0
    args.time_budget = {"hour": args.hour_time, "stereo": args.stereo_time}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows.append(run_signal("hour", make_hour(work / "hour.flac", args.hours), work, args))
        rows.append(run_signal("stereo", make_stereo(work / "stereo.flac", args.stereo_seconds), work, args))
    save_rows(args.out, "long_audio", args.smoke, f"Long audio out of core (default tiled model, int8 weights, "
              f"--memory-budget {args.memory_budget >> 20} MiB, fits bounded by --time-budget)", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
