"""Every benchmark script still runs: each one's smoke mode, as a child process.

The scripts are not part of the library, so nothing else would notice when one breaks.
They run a few at a time (each is mostly interpreter start-up and tiny fits), and write
their tables, JSON and plots into a temporary folder, never over benchmarks/results.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# name -> (arguments after the script, files the run must leave under the output folder)
CASES = {
    "bench_teachers": (["--smoke", "--out", "{out}/teachers"], ["teachers.md", "teachers.json"]),
    "bench_teachers:ooc": (["--smoke", "--out-of-core", "--out", "{out}/teachers_ooc"],
                           ["teachers_ooc.md", "teachers_ooc.json"]),
    "bench_teachers:mosaic": (["--smoke", "--mosaic", "512", "--out", "{out}/teachers_mosaic", "--tmp", "{out}"],
                              ["teachers_mosaic.md", "teachers_mosaic.json"]),
    "bench_early_stop": (["--smoke", "--out", "{out}/early_stop"], ["early_stop.md", "early_stop.json"]),
    "bench_targets": (["--smoke", "--out", "{out}/targets"], ["targets.md", "targets.json"]),
    "bench_ingest": (["--smoke", "--out", "{out}/ingest.md", "--tmp", "{out}"], ["ingest.md"]),
    # No smoke mode: the smallest useful grid instead.
    "bench_sdf_ingest": (["--resolution", "16", "--out", "{out}/sdf_ingest.md"], ["sdf_ingest.md"]),
    "bench_modalities": (["--smoke", "--out", "{out}/modalities"], ["modalities.md", "modalities.json", "modalities.png"]),
    "bench_audio": (["--smoke", "--out", "{out}/audio"], ["audio.md", "audio.json"]),
    "bench_long_audio": (["--smoke", "--out", "{out}/long_audio"], ["long_audio.md", "long_audio.json"]),
    "bench_scoring": (["--smoke", "--out", "{out}/scoring"], ["scoring.md", "scoring.json", "scoring.png"]),
    "bench_outofcore": (["--smoke", "--out", "{out}/outofcore", "--tmp", "{out}"],
                        ["outofcore.md", "outofcore.json", "outofcore.png"]),
    "bench_gpu": (["--smoke", "--device", "cpu", "--out", "{out}/gpu", "--tmp", "{out}"], ["gpu.md", "gpu.json", "gpu.png"]),
    "bench_capacity": (["--smoke", "--out", "{out}/capacity"], ["capacity.md", "capacity.json"]),
    "bench_memory": (["--smoke", "--out", "{out}/memory", "--tmp", "{out}"], ["memory.md", "memory.json"]),
}


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path]]:
    # Several children share the cores and each sets torch to all of them (fit does):
    # OpenMP's default spin-waiting then burns the time slices the others need (3-4x
    # slower here); passive waiting costs nothing at these sizes.
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_WAIT_POLICY": "PASSIVE"}

    def run(name):
        out = tmp_path_factory.mktemp(name.replace(":", "_"))
        args, _ = CASES[name]
        script = name.split(":")[0]  # "script:variant" runs one script in another mode
        cmd = [sys.executable, str(BENCH / f"{script}.py"), *(a.format(out=out) for a in args)]
        return name, (subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300), out)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(pool.map(run, CASES))


@pytest.mark.parametrize("name", list(CASES))
def test_smoke(smoke_runs, name):
    proc, out = smoke_runs[name]
    assert proc.returncode == 0, f"{name} --smoke exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    for f in CASES[name][1]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f"{name} did not write {f}"
    assert "|" in (out / CASES[name][1][0]).read_text()  # a markdown table


def test_gpu_script_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(BENCH / "bench_gpu.py"), "--only", "scoring"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr
