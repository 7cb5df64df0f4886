"""The command line itself: help everywhere, lazy imports, manifests through pipes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream.cli import COMMANDS, main

HEAVY = ("torch", "dask")


def _module_exists(command: str) -> bool:
    module = COMMANDS[command].split(":")[0]
    return importlib.util.find_spec(f"intstream.cli.{module}") is not None


def _commands() -> list:
    # Commands whose module another engineer has not written yet are skipped, not failed.
    return [
        pytest.param(c, marks=pytest.mark.skipif(not _module_exists(c), reason=f"intstream.cli.{COMMANDS[c].split(':')[0]} not written yet"))
        for c in sorted(COMMANDS)
    ]


def test_group_help_lists_every_command():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for name in COMMANDS:
        assert name in r.stdout


def test_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "0." in r.stdout


@pytest.mark.parametrize("command", _commands())
def test_command_help(command):
    r = CliRunner().invoke(main, [command, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage:" in r.stdout and "--help" in r.stdout


_PROBE = """
import json, sys
from intstream.cli import main
try:
    main(sys.argv[1:], prog_name="intstream")
except SystemExit:
    pass
sys.stderr.write(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})) + "\\n")
"""


def _heavy_imports_after(args: list[str]) -> list[str]:
    """Heavy modules imported by running ``intstream ARGS`` in a fresh interpreter."""
    code = _PROBE.format(heavy=set(HEAVY))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)
    assert "Usage:" in p.stdout, (p.stdout, p.stderr)
    return json.loads(p.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("command", [pytest.param(None, id="group")] + _commands())
def test_help_imports_no_torch_or_dask(command):
    args = ["--help"] if command is None else [command, "--help"]
    assert _heavy_imports_after(args) == []


def test_installed_entry_point_help_is_quick():
    exe = Path(sys.executable).with_name("intstream")
    if not exe.exists():
        pytest.skip("intstream entry point not installed in this environment")
    p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "ingest" in p.stdout and p.stderr == ""


def test_ingest_pipes_into_info(data_dir, tmp_path):
    """``intstream ingest X | intstream info`` (and ``info -``) through the stdin manifest."""
    runner = CliRunner()
    r1 = runner.invoke(main, ["ingest", str(data_dir / "librispeech" / "02.flac"), "-o", str(tmp_path / "a.zarr")])
    assert r1.exit_code == 0
    manifest = json.loads(r1.stdout)
    for args in (["info"], ["info", "-"]):
        r2 = runner.invoke(main, args, input=r1.stdout)
        assert r2.exit_code == 0, r2.output
        lines = r2.stdout.splitlines()
        assert len(lines) == 1
        info = json.loads(lines[0])
        assert info["store"] == manifest["store"]
        assert info["kind"] == "audio" and info["sample_rate"] == 16000
        assert info["shape"] == manifest["shape"] and info["complete"] is True


def test_real_shell_pipeline(tmp_path):
    """The same pipe through real processes: stdout is only the JSON lines."""
    exe = Path(sys.executable).with_name("intstream")
    if not exe.exists():
        pytest.skip("intstream entry point not installed in this environment")
    np.save(tmp_path / "v.npy", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    cmd = f"'{exe}' ingest v.npy -o v.zarr | '{exe}' info"
    p = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    info = json.loads(p.stdout)
    assert info["kind"] == "array" and info["shape"] == [2, 3] and info["channels"] == 4


def test_progress_bar_only_on_a_tty(tmp_path, monkeypatch):
    """A bar on stderr when it is a terminal, nothing otherwise; stdout stays one JSON line."""
    from intstream.progress import Progress

    np.save(tmp_path / "v.npy", np.ones((64, 64, 1), np.uint8))
    r = CliRunner().invoke(main, ["ingest", str(tmp_path / "v.npy"), "-o", str(tmp_path / "a.zarr"), "--chunks", "8,8"])
    assert r.exit_code == 0 and r.stderr == "" and len(r.stdout.splitlines()) == 1
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert Progress(3, "x").enabled


def test_debug_shows_traceback(tmp_path):
    r = CliRunner().invoke(main, ["--debug", "ingest", str(tmp_path / "none.png"), "-o", str(tmp_path / "x.zarr")])
    assert r.exit_code == 2 and "Traceback" in r.stderr
    r = CliRunner().invoke(main, ["ingest", str(tmp_path / "none.png"), "-o", str(tmp_path / "x.zarr")])
    assert "Traceback" not in r.stderr


def test_fit_takes_a_decaying_ratio_schedule(tmp_path):
    """--ratio-schedule decay:F reaches the teacher and its config file (no Choice list to retype)."""
    from intstream.checkpoint import CONFIG_NAME

    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((16, 16, 1), np.float32))
    runner = CliRunner()
    assert runner.invoke(main, ["ingest", str(tmp_path / "v.npy"), "-o", str(tmp_path / "v.zarr")]).exit_code == 0
    r = runner.invoke(main, ["fit", str(tmp_path / "v.zarr"), "-o", str(tmp_path / "v.run"), "--steps", "20",
                             "--width", "16", "--depth", "2", "--ratio-schedule", "decay:0.25"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "v.run" / CONFIG_NAME).read_text())
    assert saved["teacher"]["ratio_schedule"] == "decay:0.25"
