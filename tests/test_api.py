"""The Python API: the whole pipeline on a Kodak crop, real signatures, a light import."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import intstream


@pytest.fixture(scope="module")
def crop(tmp_path_factory, data_dir):
    """A 48 x 64 crop of kodim05 (the README's example image)."""
    path = tmp_path_factory.mktemp("api") / "kodim05_crop.png"
    Image.open(data_dir / "kodak" / "kodim05.png").crop((300, 200, 364, 248)).save(path)
    return path


@pytest.fixture(scope="module")
def pipeline(crop):
    d = crop.parent
    store = intstream.ingest(crop, d / "crop.zarr", progress=False)
    run = intstream.fit(store["store"], d / "crop.run", steps=150, width=32, depth=3, log_every=50, progress=False)
    weights = intstream.export_weights(run["run_dir"], d / "crop.safetensors", dtype="float16")
    return store, run, weights


def test_import_is_light_and_versioned():
    code = ("import sys, intstream; print(intstream.__version__); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'dask', 'matplotlib', 'xarray'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    from importlib.metadata import version

    assert out[0] == version("intstream")
    assert out[1] == "[]"


def test_namespace_exports_the_stages():
    for name in ("ingest", "fit", "export_weights", "evaluate", "decode", "load_weights", "__version__"):
        assert name in intstream.__all__
    # the functions, not the stage modules of the same names, even after those are imported
    import importlib

    importlib.import_module("intstream.decode")
    from intstream.fit import FitConfig  # noqa: F401

    for name in ("ingest", "fit", "evaluate", "decode"):
        assert inspect.isfunction(getattr(intstream, name)), name


def test_signatures_are_real_and_keyword_only():
    from intstream.fit import FitConfig

    sig = inspect.signature(intstream.fit)
    kw = {n for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert {f.name for f in dataclasses.fields(FitConfig)} <= kw
    assert sig.parameters["width"].default == FitConfig().width
    for fn in (intstream.ingest, intstream.evaluate, intstream.export_weights, intstream.decode):
        params = list(inspect.signature(fn).parameters.values())
        assert not any(p.kind is p.VAR_KEYWORD for p in params), fn
        options = [p for p in params if p.default is not p.empty and p.name not in ("output",)]
        assert all(p.kind is p.KEYWORD_ONLY for p in options), fn
        assert "Returns" in fn.__doc__ or "Returns" in inspect.getdoc(fn), fn


def test_fit_refuses_unknown_options(tmp_path):
    with pytest.raises(TypeError, match="stepz"):
        intstream.fit(tmp_path / "none.zarr", tmp_path / "r", stepz=3)


def test_pipeline_through_the_api(pipeline, crop):
    store, run, weights = pipeline
    assert store["shape"] == [48, 64] and run["steps"] == 150
    m = intstream.evaluate(weights["weights"], progress=False)
    assert m["metrics"]["psnr"] > 15 and json.loads(json.dumps(m)) == m
    # manifests name each figure once: the rate is bits_per_sample in export and eval alike
    assert "bpp" not in weights and m["bits_per_sample"] == weights["bits_per_sample"]
    assert weights["compression_ratio"] == pytest.approx(weights["raw_bytes"] / weights["bytes"], rel=1e-3)
    assert weights["source_bytes"] == crop.stat().st_size
    assert weights["source_ratio"] == pytest.approx(crop.stat().st_size / weights["bytes"], rel=1e-3)
    # a run's config.json feeds fit again as its config
    cfg = json.loads((run_dir := __import__("pathlib").Path(run["run_dir"])).joinpath("config.json").read_text())
    assert cfg["fit"]["steps"] == 150 and cfg["fit"]["width"] == 32

    w = intstream.load_weights(weights["weights"])
    assert w.kind == "image" and w.shape == (48, 64)
    full = intstream.decode(w, xarray=False)
    assert full.shape == (48, 64, 3) and full.dtype == np.uint8
    # the same as the PNG the file writer makes
    png = intstream.decode(weights["weights"], run_dir / "dec.png")
    assert np.array_equal(np.asarray(Image.open(png["decoded"])), full)
    # a region of the native grid is that part of the whole
    part = intstream.decode(w, region=(slice(8, 24), slice(16, 48)), xarray=False)
    assert np.array_equal(part, full[8:24, 16:48])
    # another resolution samples the same function: its corners are the same pixels
    up = intstream.decode(w, shape=(95, 127), xarray=False)
    assert up.shape == (95, 127, 3)
    assert np.abs(up[::2, ::2].astype(int) - full.astype(int)).max() <= 1


def test_decode_to_xarray_with_coordinates(pipeline):
    xr = pytest.importorskip("xarray")
    _, _, weights = pipeline
    da = intstream.decode(weights["weights"], shape=(95, 127), region=(slice(10, 20), slice(0, 5)))
    assert isinstance(da, xr.DataArray)
    assert da.dims == ("y", "x", "channel") and da.shape == (10, 5, 3)
    # coordinates in source pixels: index 10 of a 95-row grid over 48 source rows
    assert da.y.values[0] == pytest.approx(10 * 47 / 94)
    assert da.x.values[-1] == pytest.approx(4 * 63 / 126)


def test_readme_notebook_example_runs(tmp_path, data_dir, monkeypatch):
    """The README's Python example as written (fewer steps and a crop, for CI time)."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "intstream.fit(" in code and "intstream.decode(" in code
    src = tmp_path / "kodim05.png"
    Image.open(data_dir / "kodak" / "kodim05.png").crop((256, 128, 384, 256)).save(src)
    code = code.replace('"../shared/data/kodak/kodim05.png"', repr(str(src))).replace("steps=700", "steps=20")
    code = code.replace("shape=(1024, 1536)", "shape=(256, 256)")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    crop = np.asarray(scope["crop"])
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    assert (tmp_path / "kodim05.safetensors").is_file()
