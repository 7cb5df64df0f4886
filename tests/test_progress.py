"""Progress and logs a batch job can read, -v/-q, --config, and --help matching what runs."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from intstream import progress
from intstream.cli import main
from intstream.testing import make_image_store

LINE = re.compile(r"fit: step (\d+)/(\d+) \(\d+%\).* \| [\d.e+]+ steps/s \| elapsed \d+:\d\d:\d\d \| eta (\d+:\d\d:\d\d|\?)")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_image_store(tmp_path_factory.mktemp("progress") / "s.zarr", (16, 16))


def _cli(*args, env=None):
    """The real CLI in a subprocess: stderr is a pipe, not a terminal (as in a Slurm job)."""
    return subprocess.run([sys.executable, "-m", "intstream.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_non_tty_prints_plain_lines_every_log_interval(store, tmp_path):
    # A one-second training budget: the line count depends on the interval, not on the speed.
    r = _cli("fit", store, "-o", tmp_path / "run", "--steps", 10**6, "--width", 8, "--depth", 2,
             "--time-budget", 1, "--log-every", 2, "--log-interval", 0.1)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "fit: step" in ln]
    assert len(lines) >= 3, r.stderr
    for ln in lines:
        assert LINE.search(ln), ln
        assert "\r" not in ln
    assert "psnr" in lines[-1]
    manifest = json.loads(r.stdout)
    assert LINE.search(lines[-1]).group(1) == str(manifest["steps"])  # the last line is the final count


def test_quiet_silences_progress(store, tmp_path):
    r = _cli("fit", store, "-o", tmp_path / "run", "--steps", 20, "--width", 8, "--depth", 2,
             "--log-interval", 0.01, "-q")
    assert r.returncode == 0, r.stderr
    assert "steps/s" not in r.stderr and r.stderr.strip() == ""
    assert json.loads(r.stdout)["steps"] == 20


def test_eta_after_resume_counts_this_process(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="intstream")
    p = progress.Progress(100, "fit", enabled=True, unit="step", initial=50, log_interval=3600)
    try:
        assert p.mode == "lines"
        p._t0 -= 10.0  # ten seconds in this process
        for _ in range(5):
            p.update(1, psnr=20.5)
        line = p.line()
    finally:
        p.close()
    # 5 steps in 10 s: 0.5 steps/s, 45 left -> 90 s (the 50 done before the resume do not count)
    assert "step 55/100 (55%) psnr 20.50" in line
    assert "| 0.5 steps/s |" in line and line.endswith("eta 0:01:30")
    assert not caplog.records  # work done within one interval stays quiet


def test_terminal_bar_starts_at_the_resumed_step(monkeypatch):
    import io

    buf = io.StringIO()
    monkeypatch.setattr(progress, "_isatty", lambda: True)
    monkeypatch.setattr(sys, "stderr", buf)
    with progress.Progress(100, "fit", unit="step", initial=40) as p:
        assert p.mode == "bar"
        p.update(2, psnr=21.0)
    out = buf.getvalue()
    assert "42/100" in out and "psnr 21.00" in out
    assert re.search(r"\[0:00:0\d<(0:\d\d:\d\d|\?)", out), out  # h:mm:ss, not raw seconds


def test_format_hms():
    assert progress.format_hms(38814) == "10:46:54"
    assert progress.format_hms(59.6) == "0:01:00"
    assert progress.format_hms(None) == "?"


def test_verbosity_and_log_interval_on_every_command():
    for command in ("ingest", "info", "fit", "export-weights", "eval"):
        r = CliRunner().invoke(main, [command, "--help"])
        assert "-v, --verbose" in r.stdout and "-q, --quiet" in r.stdout and "--config" in r.stdout, command
    for command in ("ingest", "fit", "eval"):
        assert "--log-interval" in CliRunner().invoke(main, [command, "--help"]).stdout


# -- --config ---------------------------------------------------------------------


def _fit(args, tmp_path):
    r = CliRunner().invoke(main, ["fit", *map(str, args), "-q"])
    return r, (json.loads(r.stdout.strip().splitlines()[-1]) if r.exit_code == 0 else None)


def test_config_file_and_command_line_precedence(store, tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('steps = 7\nwidth = 8\n[fit]\ndepth = 2\nlog-every = 3\n[ingest]\nkind = "image"\n')
    r, m = _fit([store, "-o", tmp_path / "a", "--config", cfg], tmp_path)
    assert r.exit_code == 0, r.output
    assert m["total_steps"] == 7
    resolved = json.loads((tmp_path / "a" / "config.json").read_text())["fit"]
    assert (resolved["width"], resolved["depth"], resolved["log_every"]) == (8, 2, 3)
    r, m = _fit([store, "-o", tmp_path / "b", "--config", cfg, "--steps", 5, "--width", 4], tmp_path)
    assert r.exit_code == 0, r.output
    assert m["total_steps"] == 5
    assert json.loads((tmp_path / "b" / "config.json").read_text())["fit"]["width"] == 4
    # the resolved config a run writes loads as a config and repeats the run
    r, m = _fit([store, "-o", tmp_path / "c", "--config", tmp_path / "a" / "config.json"], tmp_path)
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "c" / "config.json").read_text())["fit"]
    assert again == resolved


@pytest.mark.parametrize("text, needle", [
    ("stepz = 7\n", "unknown key 'stepz'"),
    ("[fitt]\nsteps = 7\n", "unknown table [fitt]"),
    ("steps = \n", "not a valid TOML config"),
    ('steps = "many"\n', "steps"),
])
def test_config_errors_are_one_line_exit_2(store, tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    r = CliRunner().invoke(main, ["fit", str(store), "-o", str(tmp_path / "r"), "--config", str(cfg)])
    assert r.exit_code == 2, r.output
    assert needle in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    assert not (tmp_path / "r").exists()


def test_config_missing_file(store, tmp_path):
    r = CliRunner().invoke(main, ["fit", str(store), "--config", str(tmp_path / "nope.toml")])
    assert r.exit_code == 2 and "no such config file" in r.output


# -- --help shows what runs ----------------------------------------------------------


def test_fit_help_steps_and_lr_are_what_runs():
    from intstream.fit import KIND_DEFAULTS, FitConfig, resolve_config
    from intstream.teach.config import STRATEGIES

    text = " ".join(CliRunner().invoke(main, ["fit", "--help"], terminal_width=200).stdout.split())
    steps = re.search(r"Training steps T \(default, by strategy and kind: (.*?)\)\.", text).group(1)
    shown = {}
    for group in steps.split("; "):
        names, values = group.split(": ")
        for strategy in names.split("/"):
            shown[strategy] = dict((k, int(v)) for k, v in (kv.split(" ") for kv in values.split(", ")))
    assert set(shown) == set(STRATEGIES)
    for strategy in STRATEGIES:
        for kind in KIND_DEFAULTS:
            assert shown[strategy][kind] == resolve_config(FitConfig(strategy=strategy), kind).steps
    for kind in KIND_DEFAULTS:
        assert f"{kind} {resolve_config(FitConfig(), kind).lr:g}" in text


def test_default_steps_in_the_manifest_match_help(store, tmp_path):
    from intstream.fit import FitConfig, resolve_config

    r, m = _fit([store, "-o", tmp_path / "d", "--width", 4, "--depth", 2, "--time-budget", 0.05], tmp_path)
    assert r.exit_code == 0, r.output
    # The default T (config.json); the manifest's total_steps is that T refitted to the budget.
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["fit"]["steps"] == resolve_config(FitConfig(), "image").steps
    assert m["stopped"] == "time_budget" or m["steps"] == m["total_steps"]


def test_manifest_has_no_infinities(capsys):
    from intstream.cli.common import emit

    emit({"psnr": float("inf"), "nested": {"x": float("nan")}, "ok": 1.5})
    assert json.loads(capsys.readouterr().out) == {"psnr": None, "nested": {"x": None}, "ok": 1.5}
