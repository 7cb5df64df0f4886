"""Run safety through the real CLI: nothing clobbered, no writes through links, one writer
per output, signals and kills that leave nothing half-written, disk-full errors that name
the output, preemption and resume as a batch user lives them (issue 9, items 4-6)."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream.atomic import lock_output
from intstream.cli import main
from intstream.rundir import LOCK_NAME, MARKER_NAME
from intstream.testing import make_image_store

FIT = ["--width", "8", "--depth", "2", "--log-every", "5"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
BIN = Path(sys.executable).parent


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def error_line(result) -> str:
    """The error a refused command printed (its last stderr line); no traceback anywhere."""
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def manifest(result) -> dict:
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_for(predicate, what: str, timeout: float = 60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_image_store(tmp_path_factory.mktemp("store") / "s.zarr", (16, 16))


# -- fit -o: only a new, empty or intstream run directory; never through a link --------


def test_fit_writes_only_into_new_empty_or_run_directories(store, tmp_path):
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    r = run("fit", store, "-o", foreign, "--steps", "2", *FIT, "--overwrite")
    assert r.exit_code == 2 and "not an intstream run directory" in error_line(r)
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]

    empty = tmp_path / "empty"
    empty.mkdir()
    m = manifest(run("fit", store, "-o", empty, "--steps", "2", *FIT))
    assert m["steps"] == 2
    names = sorted(p.name for p in empty.iterdir())
    # Lock released; teacher_map.npz: where the teacher sampled, for eval --plot.
    assert names == sorted([MARKER_NAME, "checkpoint.pt", "config.json", "log.jsonl", "teacher_map.npz"]), names
    assert json.loads((empty / MARKER_NAME).read_text())["format"] == "intstream-run"
    # Its own run directory is fine to continue or replace.
    assert manifest(run("fit", store, "-o", empty, "--steps", "2", *FIT, "--resume"))["steps"] == 2
    assert manifest(run("fit", store, "-o", empty, "--steps", "3", *FIT, "--overwrite"))["steps"] == 3


def test_fit_never_writes_through_a_symlink(store, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    real = tmp_path / "real"
    manifest(run("fit", store, "-o", real, "--steps", "2", *FIT))

    link_dir = tmp_path / "link.run"
    link_dir.symlink_to(real)
    r = run("fit", store, "-o", link_dir, "--steps", "2", *FIT, "--resume")
    assert r.exit_code == 2 and "symbolic link" in error_line(r)

    for name in ("log.jsonl", "config.json", "checkpoint.pt"):
        (real / name).rename(real / f"{name}.bak")
        (real / name).symlink_to(target)
        r = run("fit", store, "-o", real, "--steps", "2", *FIT, "--overwrite")
        assert r.exit_code == 2 and name in error_line(r) and "symbolic link" in error_line(r)
        assert target.read_text() == "keep me"
        (real / name).unlink()
        (real / f"{name}.bak").rename(real / name)


# -- one writer per output ---------------------------------------------------------------


SLOW_INGEST = """
import sys, time
from intstream.readers.array import ArraySource
read = ArraySource.read
def slow(self, slices):
    time.sleep(float(sys.argv[1]))
    return read(self, slices)
ArraySource.read = slow
from intstream.cli import main
main(sys.argv[2:], prog_name="intstream")
"""


def slow_ingest(src: Path, out: Path, delay: float = 0.15) -> subprocess.Popen:
    """``intstream ingest SRC -o OUT`` in a subprocess, sleeping ``delay`` s per block (16 blocks)."""
    return subprocess.Popen([sys.executable, "-c", SLOW_INGEST, str(delay), "ingest", str(src), "-o", str(out),
                             "--chunks", "16,16"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def temporaries(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.tmp-*"))


@pytest.fixture
def array_src(tmp_path) -> Path:
    src = tmp_path / "v.npy"
    np.save(src, np.random.default_rng(0).random((64, 64, 1), np.float32))
    return src


def test_two_ingests_of_one_output_cannot_both_succeed(array_src, tmp_path):
    out = tmp_path / "o" / "same.zarr"
    out.parent.mkdir()
    first = slow_ingest(array_src, out)
    wait_for(lambda: temporaries(out), "the first ingest to start writing")
    second = run("ingest", array_src, "-o", out)
    assert second.exit_code == 2 and "another intstream process is writing it" in error_line(second)
    assert str(out) in error_line(second)
    stdout, stderr = first.communicate(timeout=60)
    assert first.returncode == 0, stderr
    assert json.loads(stdout)["store"] == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["same.zarr"]  # no temporaries, no lock file


def test_two_fits_on_one_run_directory_cannot_both_succeed(store, tmp_path):
    run_dir = tmp_path / "same.run"
    manifest(run("fit", store, "-o", run_dir, "--steps", "2", *FIT))
    # Another process holds the run's lock (an exclusive flock, as a running fit does).
    with lock_output(run_dir, run_dir / LOCK_NAME):
        r = run("fit", store, "-o", run_dir, "--steps", "4", *FIT, "--overwrite")
        assert r.exit_code == 2 and "another intstream process is writing it" in error_line(r)
    assert manifest(run("fit", store, "-o", run_dir, "--steps", "4", *FIT, "--overwrite"))["steps"] == 4


# -- ingest: signals and kill -9 --------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_ingest_signal_removes_its_temporary(array_src, tmp_path, sig, code):
    out = tmp_path / "o" / "v.zarr"
    out.parent.mkdir()
    proc = slow_ingest(array_src, out)
    wait_for(lambda: temporaries(out), "ingest to start writing")
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stdout == ""
    assert "interrupted" in stderr and "Traceback" not in stderr and "Task was destroyed" not in stderr, stderr
    assert list(out.parent.iterdir()) == []


def test_ingest_after_kill_9_removes_stale_temporaries(array_src, tmp_path):
    out = tmp_path / "o" / "v.zarr"
    out.parent.mkdir()
    proc = slow_ingest(array_src, out)
    wait_for(lambda: temporaries(out) and list(temporaries(out)[0].rglob("c")), "ingest to write a chunk")
    proc.kill()
    proc.communicate(timeout=60)
    assert temporaries(out), "kill -9 leaves the temporary behind"
    (out.parent / "unrelated.tmp-1").write_text("not ours")
    m = manifest(run("ingest", array_src, "-o", out))
    assert m["store"] == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["unrelated.tmp-1", "v.zarr"]


# -- disk full, read-only: exit 1 naming the output, nothing left --------------------------


def _fail_with(monkeypatch, target, code):
    def boom(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(args[-1]) if args else None)

    monkeypatch.setattr(*target, boom)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("where", ["write", "rename"])
def test_ingest_disk_full_or_read_only_names_the_output(array_src, tmp_path, monkeypatch, code, where):
    from intstream.store import StoreWriter

    out = tmp_path / "o" / "v.zarr"
    out.parent.mkdir()
    if where == "write":  # the error zarr raises for a chunk file inside the temporary store
        def full(self, slices, values):
            raise OSError(code, os.strerror(code), str(out.parent / f".{out.name}.tmp-1-x" / "signal" / "c" / "0"))

        monkeypatch.setattr(StoreWriter, "write", full)
    else:
        real_replace = os.replace

        def replace(src, dst):
            if ".tmp-" in os.fspath(src):
                raise OSError(code, os.strerror(code), os.fspath(src))
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    r = run("ingest", array_src, "-o", out)
    assert r.exit_code == 1, (r.stderr, r.exception)
    line = error_line(r)
    assert str(out) in line and ".tmp-" not in line and os.strerror(code) in line, line
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_fit_disk_full_names_the_run_and_leaves_nothing(store, tmp_path, monkeypatch, code):
    import torch

    def full(obj, fh, *args, **kwargs):
        fh.write(b"partial")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", full)
    run_dir = tmp_path / "new" / "r.run"
    r = run("fit", store, "-o", run_dir, "--steps", "3", *FIT)
    assert r.exit_code == 1, (r.stderr, r.exception)
    line = error_line(r)
    assert str(run_dir / "checkpoint.pt") in line and ".tmp-" not in line and os.strerror(code) in line, line
    assert list(tmp_path.iterdir()) == []  # the run directory and the folder made for it are gone


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 256 KiB tmpfs (true ENOSPC, then EROFS), where the tests may mount one."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_full_and_read_only_file_system(tiny_fs, tmp_path, store):
    src = tmp_path / "big.npy"
    np.save(src, np.random.default_rng(0).random((512, 512, 1), np.float32))  # 1 MiB, incompressible
    attempts = [("ingest", src, "-o", tiny_fs / "o.zarr"),
                ("fit", store, "-o", tiny_fs / "r.run", "--steps", "2", "--width", "256", "--depth", "6")]
    for code in (errno.ENOSPC, errno.EROFS):
        if code == errno.EROFS:
            subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
        for args in attempts:
            r = run(*args)
            assert r.exit_code == 1, (r.stderr, r.exception)
            line = error_line(r)
            assert os.strerror(code) in line and str(args[3]) in line and ".tmp-" not in line, line
            assert list(tiny_fs.iterdir()) == []


# -- --time-budget, rates and resume ------------------------------------------------------


def test_time_budget_counts_this_process_and_rates_too(store, tmp_path):
    run_dir = tmp_path / "r.run"
    args = ("fit", store, "-o", run_dir, "--steps", "1000000", *FIT, "--time-budget", "0.3")
    first = manifest(run(*args))
    assert first["stopped"] == "time_budget" and first["resumed_from_step"] is None
    assert first["steps_this_process"] == first["steps"]
    second = manifest(run(*args, "--resume"))
    # A fresh allocation gets the whole budget again: more than one step (the run's total
    # training time is already past 0.3 s).
    assert second["stopped"] == "time_budget" and second["steps_this_process"] > 1
    assert second["resumed_from_step"] == first["steps"]
    assert second["steps"] == first["steps"] + second["steps_this_process"]
    assert second["train_seconds"] == pytest.approx(first["train_seconds"] + second["train_seconds_this_process"],
                                                    abs=0.01)
    assert second["steps_per_second"] == pytest.approx(
        second["steps_this_process"] / second["train_seconds_this_process"], rel=0.05)


def test_resume_refuses_different_options_and_lists_them(store, tmp_path):
    run_dir = tmp_path / "r.run"
    manifest(run("fit", store, "-o", run_dir, "--steps", "10", *FIT))
    r = run("fit", store, "-o", run_dir, "--steps", "10", "--width", "16", "--depth", "2", "--strategy", "int",
            "--lr", "1e-3", "--resume")
    assert r.exit_code == 2
    line = error_line(r)
    assert "--width 16 (checkpoint: 8)" in line and "--strategy int (checkpoint: intstream)" in line, line
    assert "--depth" not in line and "--lr" not in line  # the same as the checkpoint's (lr: the image default)
    # These may change on resume.
    m = manifest(run("fit", store, "-o", run_dir, *FIT, "--resume", "--time-budget", "100", "--checkpoint-every", "1"))
    assert m["steps"] == 10 and m["steps_this_process"] == 0


def test_resume_extends_a_finished_run_and_trains_the_extra_steps(store, tmp_path):
    run_dir = tmp_path / "r.run"
    done = manifest(run("fit", store, "-o", run_dir, "--steps", "40", *FIT))
    more = manifest(run("fit", store, "-o", run_dir, "--steps", "80", *FIT, "--resume"))
    assert more["steps"] == 80 and more["steps_this_process"] == 40 and more["total_steps"] == 80
    log = [json.loads(ln) for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(5, 81, 5))
    # The extension follows an 80-step cosine from step 40: the LR rises back to half-way.
    lr0, lr_min = 1e-3, 1e-6
    at = {r["step"]: r["lr"] for r in log}
    for step in (45, 80):
        assert at[step] == pytest.approx(lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi * step / 80)) / 2, rel=1e-6)
    assert more["train_psnr"] > done["train_psnr"]
    # An unfinished run cannot change its T.
    cut = tmp_path / "cut.run"
    manifest(run("fit", store, "-o", cut, "--steps", "1000000", *FIT, "--time-budget", "0.2"))
    r = run("fit", store, "-o", cut, "--steps", "2000000", *FIT, "--resume")
    assert r.exit_code == 2 and "--steps 2000000 (checkpoint: 1000000)" in error_line(r)


# -- preemption inside a pipe, and on Slurm -----------------------------------------------


@pytest.mark.parametrize("rounds", [False, True], ids=["in_core", "out_of_core"])
def test_kill_9_then_resume_is_bit_identical(tmp_path, rounds):
    import torch

    store = make_image_store(tmp_path / "g.zarr", (16, 16), chunks=(8, 8))
    args = [*FIT, "--steps", "120", "--strategy", "intstream"] + (["--out-of-core"] if rounds else [])
    manifest(run("fit", store, "-o", tmp_path / "ref", *args))
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_fit_cmd(store, cut, *args[len(FIT):], "--checkpoint-every", "0"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: (cut / "log.jsonl").exists() and len((cut / "log.jsonl").read_text().splitlines()) >= 2,
             "two log lines")
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    m = manifest(run("fit", store, "-o", cut, *args, "--resume"))
    assert m["steps"] == 120 and 0 < m["resumed_from_step"] < 120
    ref_w = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)["model"]
    res_w = torch.load(cut / "checkpoint.pt", weights_only=True)["model"]
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k




def _fit_cmd(store, run_dir, *extra):
    return [sys.executable, "-m", "intstream.cli", "fit", str(store), "-o", str(run_dir), *FIT, *extra]


def test_fit_interrupted_in_a_broken_pipe_checkpoints_and_says_resume(store, tmp_path):
    run_dir = tmp_path / "r.run"
    proc = subprocess.Popen(_fit_cmd(store, run_dir, "--steps", "10000000"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    proc.stdout.close()  # the reader of `intstream fit | ...` is gone
    wait_for(lambda: (run_dir / "log.jsonl").exists() and (run_dir / "log.jsonl").read_text().strip(), "a log line")
    proc.send_signal(signal.SIGTERM)
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert proc.returncode == 143, stderr
    assert "--resume" in stderr and "broken pipe" in stderr and "Traceback" not in stderr, stderr
    assert (run_dir / "checkpoint.pt").is_file()


FAKE_SRUN = """#!/bin/bash
# Records its call; the first time, preempts the step like Slurm's --signal=TERM.
echo "srun $*" >> "$CALLS"
shift  # --ntasks=1
if [ ! -e "$STATE/preempted" ]; then
  touch "$STATE/preempted"
  "$@" & pid=$!
  for _ in $(seq 600); do [ -s "$RUN/log.jsonl" ] && break; sleep 0.1; done
  kill -TERM $pid
  wait $pid
  exit $?
fi
exec "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
echo "scontrol $*" >> "$CALLS"
"""
FAKE_SBATCH = """#!/bin/bash
# Runs the batch script in place, as job 42.
echo "sbatch $*" >> "$CALLS"
SLURM_JOB_ID=42 exec bash "$1"
"""


def test_slurm_script_requeues_a_preempted_fit_then_finishes(tmp_path):
    store = make_image_store(tmp_path / "img.zarr", (64, 64))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in [("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("sbatch", FAKE_SBATCH)]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "state").mkdir()
    calls = tmp_path / "calls.txt"
    run_dir = tmp_path / "img.run"
    script = Path(__file__).resolve().parents[1] / "examples" / "slurm.sbatch"
    env = {**ENV, "PATH": f"{bin_dir}:{BIN}:{os.environ['PATH']}", "CALLS": str(calls), "STATE": str(tmp_path / "state"),
           "OMP_NUM_THREADS": "1",  # cheap on a shared CI machine
           "STORE": str(store), "RUN": str(run_dir),
           "FIT_ARGS": "--width 16 --depth 3 --steps 150 --log-every 10 --memory-budget 1G"}

    first = subprocess.run(["sbatch", str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stderr  # interrupted is not failure: requeued
    assert "requeueing job 42" in first.stderr, first.stderr
    assert calls.read_text().splitlines()[-1] == "scontrol requeue 42"
    cut = json.loads((tmp_path / "img.run.fit.json").read_text().strip().splitlines()[-1])
    assert cut["interrupted"] == "SIGTERM" and cut["steps"] < 150
    assert not (tmp_path / "img.run.safetensors").exists()

    second = subprocess.run(["sbatch", str(script)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    done = json.loads((tmp_path / "img.run.fit.json").read_text().strip().splitlines()[-1])
    assert done["steps"] == 150 and done["resumed_from_step"] == cut["steps"] and done["interrupted"] is None
    assert (tmp_path / "img.run.safetensors").is_file()
    log = calls.read_text().splitlines()
    assert [ln.split()[0] for ln in log] == ["sbatch", "srun", "scontrol", "sbatch", "srun"], log
    assert all("--resume" in ln for ln in log if ln.startswith("srun"))
