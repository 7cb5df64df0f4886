"""Shared bits of the benchmark scripts: data location, tables, plots, RSS, method runs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("INTSTREAM_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results"


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


def write_sections(path: Path, title: str, sections: dict[str, list[list[dict]]]) -> None:
    """Like `write_table`, with a ``###`` heading over each named group of tables."""
    text = f"## {title}\n\n{time.strftime('%Y-%m-%d %H:%M')} on {machine()}\n\n" + "\n".join(
        f"### {name}\n\n" + "\n".join(markdown(t) for t in tables) for name, tables in sections.items())
    Path(path).write_text(text)
    print(text)


def save_rows(out: str | None, name: str, smoke: bool, title: str, rows: list[dict]) -> None:
    """Write ``rows`` to ``<results_path>.json`` and as a table to ``.md`` (nothing for a
    smoke run without ``--out``), then print them as JSON on stdout."""
    path = results_path(out, name, smoke)
    if path is not None:
        path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
        write_table(path.with_suffix(".md"), title, rows)
    print(json.dumps(rows))


def rounded(rows: list[dict], digits: int = 3, drop: tuple[str, ...] = ("log",)) -> list[dict]:
    """Rows for a table: floats rounded, bulky keys (the run logs) dropped."""
    return [{k: (round(v, digits) if isinstance(v, float) else v) for k, v in r.items() if k not in drop} for r in rows]


def results_path(out: str | None, name: str, smoke: bool) -> Path | None:
    """Where a script writes ``<name>.md/.json/.png``: ``--out``, else results/<name>.

    Smoke runs write nothing unless given ``--out`` (so CI never replaces real results).
    """
    if out is not None:
        p = Path(out)
    elif smoke:
        return None
    else:
        p = RESULTS / name
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- child processes -----------------------------------------------------------------


def intstream_cmd() -> list[str]:
    """The ``intstream`` CLI of this interpreter's environment."""
    exe = Path(sys.executable).with_name("intstream")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "intstream.cli"]


def peak_rss_of(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd``; return (seconds, peak RSS in MiB of the child, result).

    ``os.wait4`` gives the child's own rusage (``RUSAGE_CHILDREN`` would mix in every
    child so far, and ``/usr/bin/time`` is not on every node). Output goes through
    temporary files so a chatty child cannot block on a full pipe.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kw)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        proc = subprocess.CompletedProcess(cmd, child.returncode, out.read(), err.read())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return seconds, usage.ru_maxrss / 1024, proc  # ru_maxrss is KiB on Linux


def manifest_of(proc: subprocess.CompletedProcess) -> dict:
    """The JSON manifest a stage printed (its last stdout line)."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- teachers side by side ------------------------------------------------------------


def parse_method(spec: str) -> tuple[str, dict]:
    """``label=strategy[:key=value...]`` -> (label, FitConfig overrides)."""
    label, _, rest = spec.partition("=")
    parts = rest.split(":")
    opts = {"strategy": parts[0]}
    prev = None
    for p in parts[1:]:
        if "=" not in p and prev is not None:  # "interval_schedule=fixed:2" was split at its colon
            opts[prev] = f"{opts[prev]}:{p}"
            continue
        k, _, v = p.partition("=")
        prev = k
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                pass
        opts[k] = v
    return label, opts


def time_to(log: list[dict], target: float) -> float | None:
    """Training seconds at which the logged PSNR first reaches ``target`` (None: never)."""
    for row in log:
        if row["psnr"] is not None and row["psnr"] >= target:
            return row["train_seconds"]
    return None


def psnr_at(log: list[dict], seconds: float) -> float | None:
    """The logged PSNR of the current weights at ``seconds`` of training (the last log line
    at or before it; None before the first)."""
    last = None
    for row in log:
        if row["train_seconds"] > seconds:
            break
        last = row["psnr"]
    return last


# Fractions of full batch's training time at which every method's PSNR is compared with full's.
TIME_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (Path(run_dir) / "log.jsonl").read_text().splitlines() if ln.strip()]


def compare_methods(
    store: str,
    methods: list[tuple[str, dict]],
    base: dict,
    work: Path,
    signal: str,
    *,
    metrics: str | None = None,
    device: str = "auto",
    target: float | None = None,
) -> list[dict]:
    """Fit ``store`` once per method (same base config and seed) and score each.

    The target is the final training PSNR of ``full`` (else ``target``); time-to-target
    is the training time at which the logged PSNR of the current weights first reaches
    it, and ``ttt_vs_full`` its ratio to full's. The final weights are scored by
    `intstream.evaluate.evaluate` against the store (``metrics``: the kind's defaults).

    Returns
    -------
    list[dict]
        One row per method, with its run log under ``"log"``.
    """
    from intstream.evaluate import evaluate
    from intstream.fit import FitConfig, fit

    from intstream.teach.config import STEPS_FACTOR

    done = {}
    for label, opts in methods:
        if "steps" not in opts and opts.get("strategy") in STEPS_FACTOR and base.get("steps"):
            # A strategy with its own default T runs that many times the standard T.
            opts = {**opts, "steps": round(base["steps"] * STEPS_FACTOR[opts["strategy"]])}
        cfg = FitConfig(**{"checkpoint_every": 1e9, "device": device, **base, **opts})
        run_dir = Path(work) / f"{signal}_{label}"
        m = fit(store, run_dir, cfg, overwrite=True, progress=False)
        ev = evaluate(run_dir, store=store, metrics=metrics, device=device, progress=False)
        done[label] = (m, read_log(run_dir), ev["metrics"])
        progress(f"{signal} {label:>10}: train PSNR {m['train_psnr']:.2f} dB in {m['train_seconds']:.1f} s "
                 f"({m['steps']} steps); eval {ev['metrics']}")
    if "full" in done:
        target = done["full"][0]["train_psnr"]
    t_full = time_to(done["full"][1], target) if "full" in done else None
    s_full = done["full"][0]["train_seconds"] if "full" in done else None
    rows = []
    for label, (m, log, ev) in done.items():
        ttt = None if target is None else time_to(log, target)
        row = {"signal": signal, "method": label, "steps": m["steps"], "seconds": m["train_seconds"],
               "steps_per_s": m["steps_per_second"], "train_psnr": m["train_psnr"]}
        # (the eval MSE only restates its PSNR)
        row.update({f"eval_{k}": v for k, v in ev.items() if isinstance(v, (int, float)) and k != "mse"})
        if s_full:  # behind or ahead of full at the same training time, in dB
            full_log = done["full"][1]
            for f in TIME_FRACTIONS:
                a, b = psnr_at(log, f * s_full), psnr_at(full_log, f * s_full)
                row[f"vs_full_at_{f:g}x_db"] = None if a is None or b is None else round(a - b, 3)
        row.update({"target": target, "time_to_target": ttt,
                    "ttt_vs_full": None if (ttt is None or not t_full) else ttt / t_full,
                    "seconds_vs_full": None if not s_full else m["train_seconds"] / s_full, "log": log})
        rows.append(row)
    return rows


def summarise_methods(rows: list[dict], group: str = "") -> list[dict]:
    """Per method: means over signals of every numeric column, and how many reached the target."""
    import statistics

    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == method]
        s = {"group": group, "method": method} if group else {"method": method}
        for col in rs[0]:
            if col in ("signal", "method", "log", "target", "time_to_target", "ttt_vs_full"):
                continue
            vals = [r[col] for r in rs if isinstance(r.get(col), (int, float))]
            s[col] = round(statistics.mean(vals), 3) if vals else None
        ratios = [r["ttt_vs_full"] for r in rs if r["ttt_vs_full"] is not None]
        s["reached_target"] = f"{len(ratios)}/{len(rs)}"
        s["ttt_vs_full_mean"] = round(statistics.mean(ratios), 3) if ratios else None
        out.append(s)
    return out


def psnr_time_axes(ax, rows: list[dict], title: str) -> None:
    """PSNR of the current weights against training time, one line per method."""
    for r in rows:
        ax.plot([p["train_seconds"] for p in r["log"]], [p["psnr"] for p in r["log"]], label=r["method"])
    if rows and rows[0].get("target") is not None:
        ax.axhline(rows[0]["target"], color="k", ls=":", lw=1, label="target (full, final)")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("PSNR of current weights (dB)")
    ax.set_title(title)
    ax.legend()


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display on benchmark nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


MOSAIC_CROP = 256  # kodak_mosaic's crop edge


def kodak_mosaic(edge: int, out: Path, tile: int = MOSAIC_CROP) -> Path:
    """An ``edge``² RGB PNG tiled with ``tile``² crops of the 12 Kodak images, cycling
    through them (three crop offsets, horizontal/vertical flips) so neighbouring tiles differ."""
    import numpy as np
    from PIL import Image

    images = [np.asarray(Image.open(DATA / "kodak" / f"kodim{i:02d}.png").convert("RGB")) for i in range(1, 13)]
    tile = min(tile, edge)  # a smoke-sized mosaic smaller than one crop is one crop
    n = edge // tile
    canvas = np.zeros((n * tile, n * tile, 3), np.uint8)
    for j in range(n * n):
        im = images[j % 12]
        r, c = divmod(j, n)
        y0 = min(max(0, (im.shape[0] - tile) // 2 + (j // 12 % 3 - 1) * (tile // 3)), im.shape[0] - tile)
        x0 = (im.shape[1] - tile) // 2
        crop = im[y0 : y0 + tile, x0 : x0 + tile]
        if (j // 12) % 2:
            crop = crop[:, ::-1]
        if (j // 24) % 2:
            crop = crop[::-1]
        canvas[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] = crop
    Image.fromarray(canvas).save(out)
    return out


def warm_up(work: Path, device: str = "auto") -> None:
    """A throwaway 20-step fit, so the first measured method is not charged for torch's
    thread pools and kernel selection."""
    from intstream.fit import FitConfig, fit
    from intstream.testing import make_image_store

    store = make_image_store(Path(work) / "warm.zarr", (16, 16), overwrite=True)
    fit(store, Path(work) / "warm.run", FitConfig(steps=20, width=16, depth=3, log_every=10, device=device),
        overwrite=True, progress=False)
