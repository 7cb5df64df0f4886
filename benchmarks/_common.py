"""Shared bits of the benchmark scripts: data location, tables, RSS."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from pathlib import Path

DATA = Path(os.environ.get("INTSTREAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols = list(rows[0])
    fmt = lambda v: "—" if v is None else (f"{v:.3g}" if isinstance(v, float) and abs(v) < 1e-2 and v else str(v))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(path: Path, title: str, *tables: list[dict]) -> None:
    """Write one or more tables under a title, with the machine and date, and echo them."""
    text = f"## {title}\n\n{time.strftime('%Y-%m-%d %H:%M')} on {machine()}\n\n" + "\n".join(markdown(t) for t in tables)
    Path(path).write_text(text)
    print(text)


def peak_rss_of(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; return (seconds, peak RSS in MiB of the child, result)."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-2000:]}")
    rss_kib = int(proc.stderr.strip().splitlines()[-1])
    return seconds, rss_kib / 1024, proc
