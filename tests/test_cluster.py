"""examples/dask_cluster.py: out-of-core fitting with the chunk tasks on a Dask cluster
(issue 13, item 6), through the real CLI: the Slurm job script it would submit, and a real
fit of a Kodak image whose rounds run on a LocalCluster's worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "dask_cluster.py"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}


def test_slurm_job_script_has_the_requested_resources():
    pytest.importorskip("dask_jobqueue")
    r = subprocess.run([sys.executable, str(SCRIPT), "s.zarr", "s.run", "--dry-run", "--cores", "4",
                        "--memory", "16GB", "--walltime", "00:30:00", "--queue", "gpu", "--job-extra=--gres=gpu:1"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for directive in ("#SBATCH -p gpu", "#SBATCH --cpus-per-task=4", "#SBATCH -t 00:30:00", "#SBATCH --gres=gpu:1"):
        assert directive in lines, r.stdout
    assert any("dask_worker" in ln or "dask-worker" in ln for ln in lines), r.stdout


def test_fit_rounds_run_on_a_dask_cluster(data_dir, tmp_path):
    store, run_dir = tmp_path / "k.zarr", tmp_path / "k.run"
    ing = subprocess.run(["intstream", "ingest", str(data_dir / "kodak" / "kodim05.png"), "-o", str(store),
                          "--chunks", "256,256", "-q"], env=ENV, capture_output=True, text=True, timeout=120)
    assert ing.returncode == 0, ing.stderr
    fit = subprocess.run([sys.executable, str(SCRIPT), str(store), str(run_dir), "--local", "1", "--wait", "120",
                          "--", "--steps", "6", "--log-every", "2", "-q"],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr
    assert "Traceback" not in fit.stderr, fit.stderr
    assert "worker(s)" in fit.stderr and "tcp://" in fit.stderr
    m = json.loads(fit.stdout.strip().splitlines()[-1])
    assert m["stage"] == "fit" and m["steps"] == 6 and m["out_of_core"] is True
    assert (run_dir / "checkpoint.pt").is_file()
    assert m["train_psnr"] > 5.0  # a fitted RGB image, not NaN or a crash

    # Resume through the same script continues the run; nothing is refitted from scratch.
    again = subprocess.run([sys.executable, str(SCRIPT), str(store), str(run_dir), "--local", "1", "--wait", "120",
                            "--", "--steps", "6", "--log-every", "2", "-q"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    m2 = json.loads(again.stdout.strip().splitlines()[-1])
    assert m2["steps"] == 6 and m2["resumed_from_step"] == 6
