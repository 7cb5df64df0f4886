"""Ingest streams: peak memory and throughput of ``intstream ingest`` on big sources.

Generates, in a temporary folder (deleted afterwards):

* a 32768 x 32768 RGB uint8 tiled BigTIFF (512 x 512 tiles, 3 GiB of pixels), written
  tile by tile with `intstream.testing.write_tiled_tiff`;
* one hour of audio: 16 kHz mono FLAC and 44.1 kHz stereo WAV, written block by block
  with `intstream.testing.write_audio`;

then runs ``intstream ingest`` on each as a child process and measures that child's
wall time and peak RSS (``os.wait4``'s rusage, i.e. the child alone). Prints a markdown
table and writes it to ``benchmarks/results/ingest.md``.

    python benchmarks/bench_ingest.py            # the full run (several minutes, ~5 GB of /tmp)
    python benchmarks/bench_ingest.py --smoke    # tiny sizes, seconds (CI)

Exits 1 if a child exceeds the memory budget (1.5 GiB) or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUDGET_MIB = 1536


def _intstream() -> list[str]:
    exe = Path(sys.executable).with_name("intstream")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "intstream.cli"]


def run_ingest(source: Path, store: Path, extra: list[str] = ()) -> dict:
    """Run ``intstream ingest`` as a child; return its manifest, wall seconds and peak RSS."""
    cmd = _intstream() + ["ingest", str(source), "-o", str(store), *extra]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err)
        # wait4 gives this child's own rusage (RUSAGE_CHILDREN would mix all children).
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {child.returncode}: {stderr.strip()}")
    manifest = json.loads(stdout.strip().splitlines()[-1])
    # ru_maxrss is in KiB on Linux.
    return {"manifest": manifest, "seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024.0}


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def cases(smoke: bool) -> list[dict]:
    if smoke:
        return [
            {"name": "tiled BigTIFF RGB", "kind": "tiff", "shape": (1024, 1536), "tile": (256, 256)},
            {"name": "FLAC 16 kHz mono", "kind": "audio", "suffix": ".flac", "seconds": 20, "rate": 16000, "channels": 1},
            {"name": "WAV 44.1 kHz stereo", "kind": "audio", "suffix": ".wav", "seconds": 10, "rate": 44100, "channels": 2},
        ]
    return [
        {"name": "tiled BigTIFF RGB", "kind": "tiff", "shape": (32768, 32768), "tile": (512, 512)},
        {"name": "FLAC 16 kHz mono, 1 h", "kind": "audio", "suffix": ".flac", "seconds": 3600, "rate": 16000, "channels": 1},
        {"name": "WAV 44.1 kHz stereo, 1 h", "kind": "audio", "suffix": ".wav", "seconds": 3600, "rate": 44100, "channels": 2},
    ]


def bench(case: dict, tmp: Path) -> dict:
    from intstream.testing import write_audio, write_tiled_tiff

    t0 = time.perf_counter()
    if case["kind"] == "tiff":
        src = write_tiled_tiff(tmp / "big.tif", case["shape"], 3, "uint8", tile=case["tile"], seed=0, bigtiff=True)
        what = f"{case['shape'][0]}×{case['shape'][1]}×3 uint8, tiles {case['tile'][0]}²"
    else:
        src = write_audio(tmp / f"long{case['suffix']}", case["seconds"], case["rate"], case["channels"], "PCM_16", seed=0)
        what = f"{case['seconds']} s × {case['channels']} ch @ {case['rate']} Hz, int16"
    gen = time.perf_counter() - t0
    print(f"  generated {src.name} ({src.stat().st_size / 2**20:.0f} MiB) in {gen:.1f} s", file=sys.stderr)
    store = tmp / "out.zarr"
    r = run_ingest(src, store)
    m = r["manifest"]
    row = {
        "case": case["name"],
        "signal": what,
        "file_mib": src.stat().st_size / 2**20,
        "signal_mib": m["bytes"] / 2**20,
        "store_mib": _dir_bytes(store) / 2**20,
        "chunks": "×".join(map(str, m["chunks"])) + ("" if not m.get("shards") else " (sharded)"),
        "seconds": r["seconds"],
        "mb_s": m["bytes"] / 1e6 / r["seconds"],
        "peak_rss_mib": r["peak_rss_mib"],
    }
    shutil.rmtree(store)
    src.unlink()
    return row


def table(rows: list[dict], smoke: bool) -> str:
    head = (
        "| case | signal | file MiB | signal MiB | store MiB | chunks | seconds | MB/s (signal) | peak RSS MiB |\n"
        "|---|---|---:|---:|---:|---|---:|---:|---:|\n"
    )
    body = "".join(
        f"| {r['case']} | {r['signal']} | {r['file_mib']:.1f} | {r['signal_mib']:.1f} | {r['store_mib']:.1f} | "
        f"{r['chunks']} | {r['seconds']:.1f} | {r['mb_s']:.1f} | {r['peak_rss_mib']:.0f} |\n"
        for r in rows
    )
    note = (
        f"\n{'Smoke sizes. ' if smoke else ''}Child process `intstream ingest` only (generation not timed); "
        f"peak RSS from `os.wait4`; budget {BUDGET_MIB} MiB. {os.cpu_count()} CPUs.\n"
    )
    return head + body + note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    ap.add_argument("--tmp", type=Path, default=None, help="where to generate sources (default: a new temp folder)")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown table file (default: benchmarks/results/ingest.md; smoke runs write none unless given)")
    ap.add_argument("--only", choices=["tiff", "audio"], default=None, help="run one kind of case")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="intstream-bench-", dir=args.tmp))
    rows = []
    try:
        for case in cases(args.smoke):
            if args.only and case["kind"] != args.only:
                continue
            print(f"{case['name']} ...", file=sys.stderr)
            rows.append(bench(case, tmp))
            print(f"  {rows[-1]['seconds']:.1f} s, {rows[-1]['mb_s']:.0f} MB/s, peak RSS {rows[-1]['peak_rss_mib']:.0f} MiB",
                  file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = table(rows, args.smoke)
    print(text)
    out = args.out if args.out is not None else (None if args.smoke else HERE / "results" / "ingest.md")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Ingest: streaming memory and throughput\n\n" + text)
    over = [r["case"] for r in rows if r["peak_rss_mib"] > BUDGET_MIB]
    if over:
        print(f"over the {BUDGET_MIB} MiB budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
