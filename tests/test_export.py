"""Weights file: precision vs PSNR on a fitted Kodak crop, decode equality, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from intstream.checkpoint import save_checkpoint
from intstream.cli import main
from intstream.errors import InputError
from intstream.evaluate import evaluate
from intstream.export import export_weights, load_source, load_weights
from intstream.ingest import ingest
from intstream.models import predict
from intstream.testing import train_full_batch
from intstream.store import open_store

STEPS = 300


def fit_tiny(store, run_dir, *, width=64, depth=4, steps=STEPS, lr=1e-3, seed=0):
    """A full-batch Adam loop (the paper's optimiser settings) writing a fit-style checkpoint."""
    cfg, model = train_full_batch(store, width=width, depth=depth, steps=steps, lr=lr, seed=seed)
    x, y = (torch.from_numpy(a) for a in store.load_all())
    mse = float(torch.mean((predict(model, x) - y) ** 2))
    run_dir.mkdir()
    span = float(store.meta["normalisation"].get("span", 1.0))  # targets span [-1, 1] now: eval's data range
    psnr = 10 * math.log10(span**2 / mse)
    with open(run_dir / "log.jsonl", "w") as log:
        log.write(json.dumps({"step": steps, "wall": 1.0, "train_seconds": 1.0, "loss": mse, "psnr": psnr}) + "\n")
    save_checkpoint(run_dir / "checkpoint.pt", {
        "model_config": cfg.to_dict(), "model": model.state_dict(), "step": steps,
        "fit_config": {"steps": steps, "lr": lr}, "store": {"path": str(store.path), "meta": store.meta},
        "summary": {"steps": steps, "train_seconds": 1.0, "wall_seconds": 1.0, "train_psnr": psnr, "strategy": "full"},
    })
    return model, psnr


@pytest.fixture(scope="module")
def kodak_run(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("kodak")
    crop = np.asarray(Image.open(data_dir / "kodak" / "kodim05.png").convert("RGB"))[200:264, 300:364]
    Image.fromarray(crop).save(tmp / "crop.png")
    store = open_store(ingest(tmp / "crop.png", tmp / "crop.zarr", progress=False)["store"])
    model, psnr = fit_tiny(store, tmp / "run")
    return {"tmp": tmp, "store": store, "run": tmp / "run", "model": model, "psnr": psnr}


@pytest.fixture(scope="module")
def exported(kodak_run):
    out = {}
    for dtype in ("float32", "float16", "int8"):
        path = kodak_run["tmp"] / f"w_{dtype}.safetensors"
        man = export_weights(kodak_run["run"], path, dtype=dtype)
        ev = evaluate(path, metrics="psnr,ssim", device="cpu")
        out[dtype] = {"path": path, "manifest": man, "eval": ev}
    return out


def test_fit_reached_a_useful_psnr(kodak_run):
    assert kodak_run["psnr"] > 28


def test_manifest_figures(exported, kodak_run):
    for dtype, e in exported.items():
        m = e["manifest"]
        assert m["stage"] == "export-weights" and m["dtype"] == dtype
        assert m["bytes"] == e["path"].stat().st_size
        assert m["raw_bytes"] == 64 * 64 * 3
        assert m["compression_ratio"] == pytest.approx(m["raw_bytes"] / m["bytes"], rel=1e-3)
        assert m["bits_per_sample"] == pytest.approx(8 * m["bytes"] / (64 * 64), rel=1e-5)
        assert "bpp" not in m  # one name for the rate across stages: bits_per_sample
        assert m["params"] == sum(p.numel() for p in kodak_run["model"].parameters())
        assert m["store"] == str(kodak_run["store"].path)
    sizes = [exported[d]["manifest"]["bytes"] for d in ("float32", "float16", "int8")]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 0.4 * sizes[0]


def test_precision_psnr_deltas(exported, kodak_run):
    p32 = exported["float32"]["eval"]["metrics"]["psnr"]
    assert p32 == pytest.approx(kodak_run["psnr"], abs=1e-6)  # eval measures the final weights
    assert abs(exported["float16"]["eval"]["metrics"]["psnr"] - p32) < 0.05
    assert abs(exported["int8"]["eval"]["metrics"]["psnr"] - p32) < 0.5
    for e in exported.values():
        assert 0 < e["eval"]["metrics"]["ssim"] <= 1


def test_metadata_is_self_contained(exported, kodak_run):
    w = load_weights(exported["int8"]["path"])
    assert w.kind == "image" and w.shape == (64, 64) and w.channels == 3
    assert w.signal["normalisation"] == kodak_run["store"].meta["normalisation"]
    assert w.signal["source"]["sha256"] == kodak_run["store"].meta["source"]["sha256"]
    assert w.model_config["width"] == 64 and w.summary["steps"] == STEPS
    assert w.header["encoding"]["layers.1.weight"] == "int8-row-affine"
    # The SIREN input layer stays float32 (its error is multiplied by omega0 * extent).
    assert w.header["encoding"]["layers.0.weight"] == "float32"
    # Plain safetensors: the metadata is one JSON string readable without intstream.
    raw = exported["int8"]["path"].read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert json.loads(header["__metadata__"]["intstream"])["format"] == "intstream-weights"


def test_float32_weights_decode_equals_model(exported, kodak_run):
    w = load_weights(exported["float32"]["path"])
    model = kodak_run["model"]
    for name, t in model.state_dict().items():
        assert torch.equal(w.state[name], t)
    out = kodak_run["tmp"] / "dec32.png"
    evaluate(exported["float32"]["path"], decode=out, metrics="none", device="cpu")
    x, _ = kodak_run["store"].load_all()
    expect = w.norm.inverse(predict(model, torch.from_numpy(x)).numpy()).reshape(64, 64, 3)
    assert (np.asarray(Image.open(out)) == expect).all()


def test_int8_decode_equals_dequantised_model(exported, kodak_run):
    w = load_weights(exported["int8"]["path"])
    out = kodak_run["tmp"] / "dec8.zarr"
    evaluate(exported["int8"]["path"], decode=out, metrics="none", device="cpu")
    x, _ = kodak_run["store"].load_all()
    expect = w.norm.inverse(predict(w.model(), torch.from_numpy(x)).numpy()).reshape(64, 64, 3)
    assert (open_store(out).read((slice(0, 64), slice(0, 64))) == expect).all()


def test_run_dir_and_checkpoint_are_valid_sources(kodak_run):
    a, b = load_source(kodak_run["run"]), load_source(kodak_run["run"] / "checkpoint.pt")
    assert a.run_dir == b.run_dir == str(kodak_run["run"])
    ev = evaluate(kodak_run["run"], metrics="psnr", device="cpu")
    assert ev["metrics"]["psnr"] == pytest.approx(kodak_run["psnr"], abs=1e-6)
    assert ev["weights"] is None and ev["run_dir"] == str(kodak_run["run"])


# -- CLI and bad input ------------------------------------------------------------------


def _json(result):
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_cli_reads_fit_manifest_from_stdin(kodak_run, tmp_path):
    fit_line = json.dumps({"stage": "fit", "run_dir": str(kodak_run["run"]),
                           "checkpoint": str(kodak_run["run"] / "checkpoint.pt")})
    r = CliRunner().invoke(main, ["export-weights", "-o", str(tmp_path / "w.safetensors"), "--dtype", "int8"],
                           input=fit_line + "\n")
    assert r.exit_code == 0, r.output
    m = _json(r)
    assert m["dtype"] == "int8" and m["weights"] == str(tmp_path / "w.safetensors")
    r = CliRunner().invoke(main, ["eval"], input=json.dumps(m) + "\n")
    assert r.exit_code == 0, r.output
    assert _json(r)["metrics"]["psnr"] > 28


def _exit2(args, needle, **kw):
    r = CliRunner().invoke(main, args, **kw)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r


def test_existing_output_needs_overwrite(kodak_run, tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"keep me")
    _exit2(["export-weights", str(kodak_run["run"]), "-o", str(out)], "output exists")
    assert out.read_bytes() == b"keep me"
    r = CliRunner().invoke(main, ["export-weights", str(kodak_run["run"]), "-o", str(out), "--overwrite"])
    assert r.exit_code == 0 and load_weights(out).dtype == "float16"


def test_unknown_dtype_and_missing_checkpoint(kodak_run, tmp_path):
    r = CliRunner().invoke(main, ["export-weights", str(kodak_run["run"]), "-o", str(tmp_path / "w"), "--dtype", "int2"])
    assert r.exit_code == 2 and not (tmp_path / "w").exists()
    with pytest.raises(InputError):
        export_weights(kodak_run["run"], tmp_path / "w2", dtype="bfloat16")
    _exit2(["export-weights", str(tmp_path), "-o", str(tmp_path / "w3.safetensors")], "no checkpoint found")
    assert not (tmp_path / "w3.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip_data", "flip_header", "empty", "foreign", "not_safetensors"])
def test_damaged_weights_are_exit_2(exported, tmp_path, damage, data_dir):
    from safetensors.torch import save_file

    good = exported["float16"]["path"].read_bytes()
    bad = tmp_path / "bad.safetensors"
    if damage == "truncate":
        bad.write_bytes(good[: len(good) - 100])
    elif damage == "flip_data":
        b = bytearray(good)
        b[-50] ^= 0x40  # inside the tensor bytes: only the checksum can tell
        bad.write_bytes(bytes(b))
    elif damage == "flip_header":
        b = bytearray(good)
        b[12] ^= 0xFF
        bad.write_bytes(bytes(b))
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "foreign":
        save_file({"a": torch.zeros(3)}, str(bad), metadata={"x": "y"})
    else:
        bad.write_bytes((data_dir / "kodak" / "kodim01.png").read_bytes())
    with pytest.raises(InputError) as info:
        load_weights(bad)
    assert str(bad) in str(info.value)
    _exit2(["eval", str(bad), "--decode", str(tmp_path / "x.png")], str(bad))
    assert not (tmp_path / "x.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.safetensors"]  # no temporaries left
