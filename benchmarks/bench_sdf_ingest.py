"""How fast does a mesh become a signed-distance store? (intstream ingest --kind sdf)

Each (mesh, resolution) runs the real `intstream.ingest.ingest` in a fresh process, so
that peak RSS is that run's own. Prints a table and writes it to
benchmarks/results/sdf_ingest.md.

    python benchmarks/bench_sdf_ingest.py                       # bunny + teapot at 256
    python benchmarks/bench_sdf_ingest.py --resolution 128 --resolution 256 --mesh path/to.obj

CPU seconds are reported next to wall seconds: on a shared machine the wall time also
measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("INTSTREAM_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results" / "sdf_ingest.md"

_CHILD = r"""
import json, resource, sys, time
from intstream.ingest import ingest
src, out, res = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, c0 = time.perf_counter(), time.process_time()
manifest = ingest(src, out, kind="sdf", resolution=res, progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"wall": wall, "cpu": cpu, "rss_mb": rss, "stored_bytes": manifest["stored_bytes"]}))
"""


def run_one(mesh: Path, resolution: int, workdir: Path) -> dict:
    out = workdir / f"{mesh.stem}-{resolution}.zarr"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(mesh), str(out), str(resolution)],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"ingest of {mesh} at {resolution} failed:\n{proc.stderr[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(mesh=mesh.name, resolution=resolution, voxels=resolution**3)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mesh", action="append", type=Path, help="mesh file (default: bunny and teapot)")
    ap.add_argument("--resolution", action="append", type=int, help="grid resolution (default 256)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="markdown table to write")
    args = ap.parse_args(argv)
    meshes = args.mesh or [DATA / "meshes" / "bunny.obj", DATA / "meshes" / "teapot.obj"]
    resolutions = args.resolution or [256]

    rows = []
    with tempfile.TemporaryDirectory(dir=ROOT / "benchmarks") as tmp:
        for mesh in meshes:
            for res in resolutions:
                row = run_one(mesh, res, Path(tmp))
                rows.append(row)
                print(f"{row['mesh']} {res}^3: {row['wall']:.1f} s wall, {row['cpu']:.1f} s CPU", file=sys.stderr)

    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    lines = [
        "# SDF ingest (mesh -> signed-distance store)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} at the end; "
        "python benchmarks/bench_sdf_ingest.py. Wall time includes loading the mesh and writing the store.",
        "",
        "| mesh | resolution | seconds (wall) | seconds (CPU) | voxels/s (wall) | voxels/s (CPU) | peak RSS (MB) | store (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mesh']} | {r['resolution']}³ | {r['wall']:.1f} | {r['cpu']:.1f} | "
            f"{r['voxels'] / r['wall']:,.0f} | {r['voxels'] / r['cpu']:,.0f} | {r['rss_mb']:.0f} | "
            f"{r['stored_bytes'] / 1e6:.1f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
