"""The tiled SIREN bank (DESIGN §9): routing and blending against a dense oracle, seams,
sizing, and the pipeline (fit -> export -> eval) with ``--model tiled``."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from intstream.cli import main
from intstream.evaluate import evaluate
from intstream.export import export_weights, load_weights
from intstream.fit import FitConfig, fit
from intstream.ingest import ingest
from intstream.models import ModelConfig, TiledSiren, build_model, count_params, predict
from intstream.models.sizing import model_kwargs, parse_tile, siren_params
from intstream.normalize import block_coords
from intstream.store import open_store


def _tiled(grid, tile, overlap=2.0, width=8, depth=3, out_dim=2, extent=None, seed=0):
    torch.manual_seed(seed)
    extent = extent or (1.0,) * len(grid)
    return build_model(ModelConfig(in_dim=len(grid), out_dim=out_dim, model="tiled", grid=grid, extent=extent,
                                   tile=tile, overlap=overlap, width=width, depth=depth))


def _ramp(t):
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def dense_oracle(model: TiledSiren, x: torch.Tensor):
    """Every tile on every sample, weighted by the explicitly written partition of unity.

    Independent of the model's routing and group packing: per axis, tile j owns
    [jL, (j+1)L) of the cell positions q and ramps in/out over [border - m, border + m].
    """
    q = ((x.double().numpy() / np.array(model.extent)) + 1) * (np.array(model.grid) - 1) / 2 + 0.5
    out = torch.zeros(x.shape[0], model.out_dim, dtype=torch.float64)
    wsum = np.zeros(x.shape[0])
    for t in range(model.n_tiles):
        jt = np.unravel_index(t, model.counts)
        w = np.ones(x.shape[0])
        local = np.empty_like(q)
        for a, j in enumerate(jt):
            L, k, m = model.lengths[a], model.counts[a], model.margins[a]
            lo_b, hi_b = j * L, (j + 1) * L
            qa = q[:, a]
            if m > 0:
                fa = np.ones_like(qa)
                if j > 0:
                    fa *= _ramp((qa - lo_b + m) / (2 * m))
                if j < k - 1:
                    fa *= 1 - _ramp((qa - hi_b + m) / (2 * m))
            else:
                fa = ((qa >= lo_b) | (j == 0)) & ((qa < hi_b) | (j == k - 1))
            w = w * fa
            local[:, a] = 2 * (qa - (lo_b - m)) / (L + 2 * m) - 1
        sel = w > 0
        if sel.any():
            with torch.no_grad():
                f = model.tile_forward(t, torch.from_numpy(local[sel]).float()).double()
            out[torch.from_numpy(sel)] += torch.from_numpy(w[sel])[:, None] * f
        wsum += w
    return out, wsum


@pytest.mark.parametrize("grid,tile,overlap", [
    ((300,), (64,), 8.0),            # audio-like, ragged: 5 tiles of 60
    ((40, 50), (16, 16), 2.0),       # image, 3 x 4 balanced tiles
    ((33, 20), (8, 8), 0.0),         # disjoint tiles
    ((20, 18, 17), (8, 8, 8), 1.5),  # SDF-like: corners blend 8 tiles
])
def test_batched_forward_equals_dense_oracle(grid, tile, overlap):
    model = _tiled(grid, tile, overlap)
    d = len(grid)
    full = torch.from_numpy(block_coords(grid, (1.0,) * d, tuple(slice(0, n) for n in grid)))
    # Grid samples, off-grid samples, and a skewed set (one tile gets most: several groups).
    g = torch.Generator().manual_seed(1)
    skew = torch.rand(3000, d, generator=g) * 0.2 - 1.0
    x = torch.cat([full, torch.rand(500, d, generator=g) * 2 - 1, skew])
    ref, wsum = dense_oracle(model, x)
    np.testing.assert_allclose(wsum, 1.0, atol=1e-9)  # partition of unity
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)
    # Routing: weights per sample sum to 1, interior samples use one tile.
    sample, tile_id, weight, local = model.route(x)
    sums = torch.zeros(x.shape[0], dtype=torch.float64).index_add_(0, sample, weight.double())
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert local.abs().max() <= 1.0 + 1e-6
    assert int(torch.bincount(sample, minlength=x.shape[0]).max()) <= 2 ** d
    if overlap == 0:
        assert sample.numel() == x.shape[0]


def test_shapes_gradients_and_empty_input(bf16_scoring):
    for grid, tile in [((1000,), (100,)), ((64, 48), (16, 16)), ((16, 16, 16), (8, 8, 8))]:
        model = _tiled(grid, tile, out_dim=3)
        x = torch.rand(777, len(grid)) * 2 - 1
        out = model(x)
        assert out.shape == (777, 3) and out.dtype == torch.float32
        out.square().mean().backward()
        g = model.layers[1].weight.grad
        assert g.shape == (model.n_tiles, 8, 8) and torch.isfinite(g).all()
        assert (g.abs().sum((1, 2)) > 0).sum() >= model.n_tiles // 2  # gradients reach the tiles hit
        assert model(torch.zeros(0, len(grid))).shape == (0, 3)
        assert predict(model, x, dtype=torch.bfloat16).shape == (777, 3)
    assert count_params(model) == model.n_tiles * siren_params(3, 3, 8, 3)


def test_blend_is_continuous_across_borders_and_disjoint_tiles_are_not():
    """Just left/right of every tile border the blended output agrees (no seam)."""
    grid, tile = (96, 96), (32, 32)
    eps = 1e-3  # samples
    borders = np.array([32.0, 64.0])  # cell positions of the borders
    q_along = np.linspace(0.5, 95.5, 37)
    pts = [(b + s * eps, c) for b in borders for s in (-1, 1) for c in q_along]
    q = np.array(pts)
    x = torch.from_numpy(((q - 0.5) / ((np.array(grid) - 1) / 2) - 1).astype(np.float32))
    for overlap, expect_seam in ((2.0, False), (0.0, True)):
        model = _tiled(grid, tile, overlap, width=16, out_dim=1)
        with torch.no_grad():
            y = model(x).reshape(2, 2, -1)
        jump = (y[:, 1] - y[:, 0]).abs().max().item()
        assert (jump > 0.05) == expect_seam, (overlap, jump)


@pytest.fixture(scope="module")
def crop_store(tmp_path_factory, data_dir):
    """A 128x128 crop of Kodak image 05 as a store."""
    d = tmp_path_factory.mktemp("tiled")
    im = np.asarray(Image.open(data_dir / "kodak" / "kodim05.png").convert("RGB"))[192:320, 320:448]
    Image.fromarray(im).save(d / "crop.png")
    return d, ingest(d / "crop.png", d / "crop.zarr", progress=False)["store"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny models only pay for synchronisation (and CI shares its cores);
    fit keeps the thread count when OMP_NUM_THREADS is set."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiled_run(crop_store, one_thread):
    d, store = crop_store
    m = fit(store, d / "run", FitConfig(steps=300, model="tiled", tile=(32, 32), capacity=0.5, log_every=100,
                                       strategy="full"))
    return d, open_store(store), m


def test_no_seams_on_a_fitted_crop(tiled_run):
    """PSNR in the 2-sample band along tile borders is within 1 dB of the interior's."""
    d, store, m = tiled_run
    w = load_weights(export_weights(d / "run", d / "w32.safetensors", dtype="float32")["weights"])
    model = w.model()
    coords, targets = store.load_all()
    pred = predict(model, torch.from_numpy(coords)).numpy()
    err = ((pred - targets) ** 2).mean(1).reshape(store.shape)
    i = np.arange(128)
    near = (np.abs(((i + 0.5) % 32) - 16) > 14)  # the 2 samples each side of a border at 32, 64, 96
    band = near[:, None] | near[None, :]
    band[:, [0, 1, 126, 127]] = band[[0, 1, 126, 127], :] = False  # image edges are no tile border
    psnr = lambda e: 10 * math.log10(1 / e.mean())  # noqa: E731
    inner = ~(near[:, None] | near[None, :])
    assert m["train_psnr"] > 24, m
    assert abs(psnr(err[band]) - psnr(err[inner])) < 1.0, (psnr(err[band]), psnr(err[inner]))


def test_export_eval_roundtrip(tiled_run):
    d, store, m = tiled_run
    ck = torch.load(d / "run" / "checkpoint.pt", weights_only=True)
    assert ck["model_config"]["model"] == "tiled" and tuple(ck["model_config"]["tile"]) == (32, 32)
    ref = build_model(ModelConfig.from_dict(ck["model_config"]))
    ref.load_state_dict(ck["model"])
    x = torch.rand(2000, 2) * 2 - 1
    want = predict(ref, x)
    for dtype, tol in (("float32", 1e-6), ("float16", 3e-2), ("int8", 0.15)):
        path = d / f"w_{dtype}.safetensors"
        man = export_weights(d / "run", path, dtype=dtype, overwrite=True)
        w = load_weights(path)
        assert w.model_config["model"] == "tiled" and man["params"] == m["params"]
        got = predict(w.model(), x)
        assert (got - want).abs().max() < tol, dtype
        ev = evaluate(path, metrics="psnr", device="cpu")
        assert abs(ev["metrics"]["psnr"] - m["train_psnr"]) < (0.05 if dtype != "int8" else 1.0), (dtype, ev)
    assert (d / "w_int8.safetensors").stat().st_size < 0.7 * (d / "w_float16.safetensors").stat().st_size
    # Any resolution: the same continuous signal on a 2x grid (every other sample is the 1x grid).
    fine = torch.from_numpy(block_coords((255, 255), (1.0, 1.0), (slice(0, 255), slice(0, 255))))
    coarse = torch.from_numpy(block_coords((128, 128), (1.0, 1.0), (slice(0, 128), slice(0, 128))))
    up = predict(ref, fine).reshape(255, 255, 3)[::2, ::2]
    torch.testing.assert_close(up.reshape(-1, 3), predict(ref, coarse), atol=1e-4, rtol=1e-4)


def test_cli_tiled_beats_single_at_equal_params_and_steps(crop_store, one_thread, tmp_path):
    _, store = crop_store
    psnr, params = {}, {}
    for model in ("tiled", "single"):
        r = CliRunner().invoke(main, ["fit", store, "-o", str(tmp_path / model), "--model", model, "--capacity", "0.5",
                                      "--steps", "200", "--strategy", "full", "--log-every", "100"]
                               + (["--tile", "32x32"] if model == "tiled" else []))
        assert r.exit_code == 0, r.output
        man = json.loads(r.stdout.strip().splitlines()[-1])
        psnr[model], params[model] = man["train_psnr"], man["params"]
    assert abs(params["tiled"] / params["single"] - 1) < 0.1, params
    assert psnr["tiled"] > psnr["single"] + 1.0, psnr


def test_sizing_rules():
    kodak = model_kwargs("image", (512, 768), 3, (1.0, 1.0))
    assert kodak["model"] == "tiled" and kodak["tile"] == (64, 64)  # one 6x256 SIREN: 0.22 params per value
    paper = model_kwargs("image", (512, 768), 3, (1.0, 1.0), model="single")
    assert (paper["width"], paper["depth"]) == (256, 6)  # the paper protocol, one flag away
    assert model_kwargs("image", (64, 64), 3, (1.0, 1.0))["model"] == "single"
    assert model_kwargs("image", (2048, 2048), 3, (1.0, 1.0), width=64)["model"] == "single"  # explicit MLP size
    for model in ("single", "tiled"):
        kw = model_kwargs("image", (1024, 1024), 3, (1.0, 1.0), model=model, capacity=0.25)
        n = count_params(build_model(ModelConfig(**kw)))
        assert abs(n / (0.25 * 1024 * 1024 * 3) - 1) < 0.05, (model, n)
    assert parse_tile("64x32", 2) == (64, 32) and parse_tile(16, 3) == (16, 16, 16)
    with pytest.raises(ValueError):
        model_kwargs("image", (512, 512), 3, (1.0, 1.0), capacity=0.1, width=32)
    with pytest.raises(ValueError):
        parse_tile("64x64x64", 2)
    # Old model configs (no model/grid keys) still load as the single SIREN.
    old = ModelConfig.from_dict({"in_dim": 2, "out_dim": 3, "arch": "siren", "width": 16, "depth": 3, "omega0": 30.0,
                                 "first_omega0": None, "fourier_features": 256, "fourier_scale": 10.0})
    assert old.model == "single" and type(build_model(old)).__name__ == "Siren"
    cfg = ModelConfig(**kodak)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_bad_tile_option_is_exit_2(crop_store, tmp_path):
    _, store = crop_store
    for args in (["--tile", "axb"], ["--model", "tiled", "--arch", "fourier"], ["--capacity", "0.1", "--width", "8"]):
        r = CliRunner().invoke(main, ["fit", store, "-o", str(tmp_path / "r"), "--steps", "1", *args])
        assert r.exit_code == 2, (args, r.output)
