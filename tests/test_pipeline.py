"""Whole pipelines through the real CLI: stdin manifests from stage to stage, and the examples."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from intstream.cli import main
from intstream.testing import make_image, write_png

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _last_json(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines, "no manifest on stdout"
    return json.loads(lines[-1])


def _stage(args, stdin: str | None = None) -> tuple[dict, str]:
    r = CliRunner().invoke(main, args, input=stdin)
    assert r.exit_code == 0, (args, r.output)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stdout  # stdout is exactly one JSON line
    return json.loads(lines[0]), lines[0] + "\n"


def test_cli_pipeline_through_stdin_manifests(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "pic.png", make_image((48, 64), seed=3))
    ing, line = _stage(["ingest", str(tmp_path / "pic.png"), "-o", "pic.zarr"])
    fit, line = _stage(["fit", "-o", "pic.run", "--steps", "60", "--width", "16", "--depth", "3",
                        "--log-every", "20"], line)
    assert fit["run_dir"] == str(tmp_path / "pic.run")
    exp, line = _stage(["export-weights", "-o", "pic.safetensors"], line)
    assert exp["dtype"] == "float16" and exp["store"] == ing["store"]
    ev, _ = _stage(["eval", "--decode", "pic.decoded.png"], line)
    assert ev["store"] == ing["store"] and ev["decoded"] == str(tmp_path / "pic.decoded.png")
    # eval measures the exported weights: the fit's final PSNR within float16's rounding.
    assert abs(ev["metrics"]["psnr"] - fit["train_psnr"]) < 0.05
    assert 0 < ev["metrics"]["ssim"] <= 1


def _sdf_ingest_available() -> bool:
    return importlib.util.find_spec("intstream.readers.sdf") is not None


@pytest.mark.parametrize("script", ["image.sh", "audio.sh", "sdf.sh"])
def test_examples(script, tmp_path, data_dir):
    if script == "sdf.sh" and not _sdf_ingest_available():
        pytest.skip("mesh ingest (intstream.readers.sdf) is not available yet")
    if shutil.which("intstream") is None:
        pytest.skip("intstream is not on PATH")
    # CI runs the examples with a few seconds of training; the defaults train longer.
    env = {**os.environ, "OUT": str(tmp_path), "BUDGET": "3", "RES": "32", "PLOTS": "1", "INTSTREAM_DATA": str(data_dir)}
    p = subprocess.run(["bash", str(EXAMPLES / script)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    ev = _last_json(p.stdout)
    assert ev["stage"] == "eval" and Path(ev["decoded"]).is_file() and ev["plots"]
    assert ev["metrics"], ev
    for value in ev["metrics"].values():
        assert value is not None


def test_example_scripts_are_well_formed():
    for script in ("image.sh", "audio.sh", "sdf.sh", "gigapixel.sh", "slurm.sbatch"):
        path = EXAMPLES / script
        assert path.is_file(), script
        subprocess.run(["bash", "-n", str(path)], check=True)
    sbatch = (EXAMPLES / "slurm.sbatch").read_text()
    assert "#SBATCH --signal=TERM@120" in sbatch and "--resume" in sbatch and "scontrol requeue" in sbatch
    assert "write_tiled_tiff" in (EXAMPLES / "gigapixel.sh").read_text()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell")
def test_example_scripts_are_executable():
    for script in ("image.sh", "audio.sh", "sdf.sh", "gigapixel.sh"):
        assert os.access(EXAMPLES / script, os.X_OK), script
