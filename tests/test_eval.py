"""eval and decode against whole-signal oracles, for every kind; bad input; plots."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import tifffile
import torch
import trimesh
from click.testing import CliRunner
from skimage.metrics import structural_similarity

from intstream.checkpoint import save_checkpoint
from intstream.cli import main
from intstream.evaluate import evaluate
from intstream.export import export_weights, load_weights
from intstream.ingest import ingest
from intstream.models import predict
from intstream.store import create_store, open_store
from intstream.testing import make_image_store, train_full_batch, write_png


def make_run(store, run_dir, *, width=32, depth=3, steps=0, lr=1e-3, seed=0, omega0=30.0):
    """A fit-style checkpoint for ``store``: a small SIREN, optionally trained full-batch."""
    cfg, model = train_full_batch(store, width=width, depth=depth, steps=steps, lr=lr, seed=seed, omega0=omega0,
                                  cosine=False)
    run_dir.mkdir(parents=True)
    (run_dir / "log.jsonl").write_text(
        "".join(json.dumps({"step": s, "wall": s / 10, "train_seconds": s / 12, "psnr": 20 + s / 50}) + "\n"
                for s in (10, 20, 30)))
    save_checkpoint(run_dir / "checkpoint.pt", {
        "model_config": cfg.to_dict(), "model": model.state_dict(), "step": steps,
        "store": {"path": str(store.path), "meta": store.meta},
        "summary": {"steps": steps, "train_seconds": 0.0, "wall_seconds": 0.0, "train_psnr": None, "strategy": "full"},
    })
    return model


def oracle(model, store):
    """Whole-signal predictions and targets (small signals only)."""
    x, y = store.load_all()
    p = predict(model, torch.from_numpy(x)).numpy()
    shape = store.shape + (store.channels,)
    return p.reshape(shape), y.reshape(shape)


def run_cli(args, input=None):
    r = CliRunner().invoke(main, args, input=input)
    return r


def manifest(r):
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def exit2(args, needle, input=None):
    r = run_cli(args, input)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == "" and needle in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r


# -- image --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("image")
    # Ragged chunks, larger than one TIFF tile: exercises halos and tile order.
    store = open_store(make_image_store(tmp / "img.zarr", (600, 700), chunks=(256, 300)))
    model = make_run(store, tmp / "run")
    w = tmp / "w.safetensors"
    export_weights(tmp / "run", w, dtype="float32")
    return {"tmp": tmp, "store": store, "model": model, "weights": w}


def test_image_metrics_equal_whole_image_oracle(image):
    p, y = oracle(image["model"], image["store"])
    m = evaluate(image["weights"], device="cpu")
    norm = image["store"].norm
    q = norm.inverse(p)
    truth = image["store"].read((slice(0, 600), slice(0, 700)))
    # On the signal's [0, 1] scale whatever the target mapping (signed targets span 2).
    assert m["metrics"]["psnr"] == pytest.approx(10 * np.log10(norm.span**2 / np.mean((p.astype(np.float64) - y) ** 2)), abs=1e-6)
    mse8 = np.mean((q.astype(np.float64) - truth) ** 2)
    assert m["metrics"]["psnr_quantized"] == pytest.approx(10 * np.log10(255**2 / mse8), abs=1e-6)
    ref = structural_similarity(q, truth, channel_axis=-1, data_range=255)
    assert abs(m["metrics"]["ssim"] - ref) < 1e-6
    assert m["store"] == str(image["store"].path) and m["decoded"] is None and m["mb_per_s"] > 0


def test_image_decode_tiff_in_the_same_pass(image):
    out = image["tmp"] / "dec.tif"
    m = evaluate(image["weights"], decode=out, device="cpu")
    p, _ = oracle(image["model"], image["store"])
    assert m["decoded"] == str(out)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        assert (tif.asarray() == image["store"].norm.inverse(p)).all()
    again = evaluate(image["weights"], device="cpu")["metrics"]  # other blocks: other summation order
    for k in ("psnr", "psnr_quantized", "ssim"):
        assert m["metrics"][k] == pytest.approx(again[k], rel=1e-9)


def test_image_decode_at_another_shape(image):
    out = image["tmp"] / "half.png"
    m = manifest(run_cli(["eval", str(image["weights"]), "--decode", str(out), "--shape", "300x350", "--metrics", "none"]))
    assert m["decoded_shape"] == [300, 350] and m["metrics"] == {}
    from PIL import Image

    a = np.asarray(Image.open(out))
    assert a.shape == (300, 350, 3)
    # Corners of linspace(-1, 1, n) are the same points at any n.
    p, _ = oracle(image["model"], image["store"])
    q = image["store"].norm.inverse(p)
    assert (a[0, 0] == q[0, 0]).all() and (a[-1, -1] == q[-1, -1]).all()


def test_image_zarr_decode_is_a_store(image, tmp_path):
    out = tmp_path / "dec.zarr"
    m = manifest(run_cli(["eval", str(image["weights"]), "--decode", str(out), "--metrics", "none"]))
    r = run_cli(["info", m["decoded"]])
    info = manifest(r)
    assert info["shape"] == [600, 700] and info["complete"]
    assert info["normalisation"] == image["store"].meta["normalisation"]


def test_store_mismatch_and_missing(image, tmp_path):
    other = make_image_store(tmp_path / "other.zarr", (64, 64))
    exit2(["eval", str(image["weights"]), "--store", str(other)], "does not match")
    exit2(["eval", str(image["weights"]), "--store", str(tmp_path / "nope.zarr")], "no such store")
    exit2(["eval", str(image["weights"]), "--metrics", "iou"], "not available")
    exit2(["eval", str(image["weights"]), "--decode", str(tmp_path / "x.wav")], "cannot be decoded")
    exit2(["eval", str(image["weights"]), "--decode", str(tmp_path / "x.jpg2")], "unknown output format")
    exit2(["eval", str(image["weights"]), "--shape", "10,10"], "--shape needs --decode")
    exit2(["eval", str(image["weights"]), "--decode", str(tmp_path / "x.png"), "--shape", "10,a"], "--shape")
    exit2(["eval", str(image["weights"]), "--decode", str(tmp_path / "x.png"), "--shape", "10"], "axes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.zarr"]


def test_existing_decode_output_is_kept(image, tmp_path):
    out = tmp_path / "x.png"
    out.write_bytes(b"old")
    exit2(["eval", str(image["weights"]), "--decode", str(out)], "output exists")
    assert out.read_bytes() == b"old"
    manifest(run_cli(["eval", str(image["weights"]), "--decode", str(out), "--overwrite", "--metrics", "none"]))
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_checksum_mismatch_and_store_gone(tmp_path):
    from intstream.testing import make_image

    write_png(tmp_path / "a.png", make_image((40, 48), seed=1))
    write_png(tmp_path / "b.png", make_image((40, 48), seed=2))
    a = open_store(ingest(tmp_path / "a.png", tmp_path / "a.zarr", progress=False)["store"])
    ingest(tmp_path / "b.png", tmp_path / "b.zarr", progress=False)
    make_run(a, tmp_path / "run")
    w = tmp_path / "w.safetensors"
    export_weights(tmp_path / "run", w)
    exit2(["eval", str(w), "--store", str(tmp_path / "b.zarr")], "source checksum differs")
    # The recorded store is gone: decoding still works from the weights alone.
    import shutil

    shutil.rmtree(tmp_path / "a.zarr")
    exit2(["eval", str(w)], "nothing to do")
    exit2(["eval", str(w), "--metrics", "psnr", "--decode", str(tmp_path / "d.png")], "pass --store")
    m = manifest(run_cli(["eval", str(w), "--decode", str(tmp_path / "d.png")]))
    assert m["store"] is None and m["metrics"] == {} and (tmp_path / "d.png").exists()


# -- audio --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audio(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("audio")
    store = open_store(ingest(data_dir / "librispeech" / "00.flac", tmp / "a.zarr", chunks=(50000,), progress=False)["store"])
    model = make_run(store, tmp / "run", width=32, depth=3, omega0=30.0)
    w = tmp / "w.safetensors"
    export_weights(tmp / "run", w, dtype="float32")
    return {"tmp": tmp, "store": store, "model": model, "weights": w}


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_audio_metrics_and_decode(audio, suffix):
    out = audio["tmp"] / f"dec{suffix}"
    m = evaluate(audio["weights"], decode=out, device="cpu")
    p, y = oracle(audio["model"], audio["store"])
    store = audio["store"]
    values = store.read((slice(0, store.shape[0]),)).astype(np.float64)
    wave = p.astype(np.float64) / store.norm.scale + store.norm.offset
    # Audio PSNR is the paper's: data range 2 on [-1, 1] (16-bit PCM / 32768).
    psnr = 10 * np.log10(4 / np.mean(((wave - values) / 32768) ** 2))
    assert m["metrics"]["psnr"] == pytest.approx(psnr, abs=1e-6)
    snr = 10 * np.log10(np.sum(values**2) / np.sum((wave - values) ** 2))
    assert m["metrics"]["snr"] == pytest.approx(snr, abs=1e-6)
    data, rate = sf.read(out, dtype="int16", always_2d=True)
    assert rate == store.meta["sample_rate"] and data.shape == (store.shape[0], 1)
    assert (data == store.norm.inverse(p)).all()


def test_audio_resampled_decode(audio):
    n = audio["store"].shape[0]
    out = audio["tmp"] / "half.wav"
    m = manifest(run_cli(["eval", str(audio["weights"]), "--decode", str(out), "--shape", str(n // 2), "--metrics", "none"]))
    info = sf.info(out)
    assert info.frames == n // 2 and abs(info.samplerate - 8000) <= 1 and m["decoded_shape"] == [n // 2]


# -- sdf ----------------------------------------------------------------------------------


def sphere_store(path, n=28, r=0.55):
    c = np.linspace(-1, 1, n, dtype=np.float32)
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    sdf = (np.sqrt(z**2 + y**2 + x**2) - r).astype(np.float32)
    with create_store(path, kind="sdf", shape=(n, n, n), channels=1, dtype="float32", chunks=(12, 12, 12),
                      meta={"sdf": {"bounds": [-1.0, 1.0], "voxel_size": 2 / (n - 1)}}) as w:
        for s in w.blocks():
            w.write(s, sdf[s])
    return open_store(path)


@pytest.fixture(scope="module")
def sdf(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdf")
    store = sphere_store(tmp / "s.zarr")
    make_run(store, tmp / "run", width=32, depth=3, steps=150, lr=1e-3, omega0=10.0)
    w = tmp / "w.safetensors"
    export_weights(tmp / "run", w, dtype="float16")
    return {"tmp": tmp, "store": store, "model": load_weights(w).model(), "weights": w}


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_sdf_iou_chamfer_and_mesh(sdf, suffix):
    out = sdf["tmp"] / f"mesh{suffix}"
    m = manifest(run_cli(["eval", str(sdf["weights"]), "--metrics", "iou,chamfer", "--decode", str(out)]))
    p, y = oracle(sdf["model"], sdf["store"])
    inter, union = np.sum((p <= 0) & (y <= 0)), np.sum((p <= 0) | (y <= 0))
    assert m["metrics"]["iou"] == pytest.approx(inter / union, abs=1e-12)
    assert m["metrics"]["iou"] > 0.8
    assert 0 < m["metrics"]["chamfer"] < 0.2
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 100
    # Vertices in box units (bounds [-1, 1] here): the sphere of radius 0.55.
    radii = np.linalg.norm(mesh.vertices, axis=1)
    assert abs(np.median(radii) - 0.55) < 0.1


def test_sdf_target_against_itself(sdf, tmp_path):
    from intstream.metrics import iou_from_counts, occupancy_counts

    _, y = oracle(sdf["model"], sdf["store"])
    assert iou_from_counts(*occupancy_counts(y, y)) == 1.0


# -- plots and CLI hygiene -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["image", "audio", "sdf"])
def test_plots(request, which, tmp_path):
    pytest.importorskip("matplotlib")
    fx = request.getfixturevalue(which)
    m = manifest(run_cli(["eval", str(fx["weights"]), "--metrics", "none", "--plot", str(tmp_path / "p")]))
    names = sorted(p.rsplit("/", 1)[-1] for p in m["plots"])
    expect = {"image": ["error.png", "worst_crops.png"], "audio": ["waveform.png"],
              "sdf": ["sdf_slice.png", "mesh.png"]}[which]
    assert names == sorted(["training.png", *expect])  # no teacher.png: these runs hold no teacher map
    for p in m["plots"]:
        check_png(p)
    exit2(["eval", str(fx["weights"]), "--metrics", "none", "--plot", str(tmp_path / "p")], "output exists")


def check_png(path, min_size=(200, 150)):
    """A whole PNG (Pillow decodes every row) of at least ``min_size`` pixels."""
    from PIL import Image

    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.load()
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1], (path, im.size)
        assert np.asarray(im.convert("L")).std() > 1, f"{path} is blank"  # something is drawn
        return im.size


def test_plots_of_a_real_fit_through_the_cli(data_dir, tmp_path):
    """ingest | fit | eval --plot on a Kodak crop: the worst regions at full resolution, and
    where the teacher sampled (written by fit into the run directory)."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    crop = np.asarray(Image.open(data_dir / "kodak" / "kodim05.png").convert("RGB"))[160:352, 240:496]
    Image.fromarray(crop).save(tmp_path / "crop.png")
    manifest(run_cli(["ingest", str(tmp_path / "crop.png"), "-o", str(tmp_path / "c.zarr")]))
    manifest(run_cli(["fit", str(tmp_path / "c.zarr"), "-o", str(tmp_path / "run"), "--steps", "40", "--width", "32",
                      "--depth", "3", "--log-every", "10"]))
    with np.load(tmp_path / "run" / "teacher_map.npz") as z:
        assert z["error"].shape == z["selected"].shape == (192, 256)
        assert z["selected"].sum() > 0 and np.isfinite(z["error"]).all()
    m = manifest(run_cli(["eval", str(tmp_path / "run"), "--metrics", "none", "--plot", str(tmp_path / "p")]))
    names = sorted(p.rsplit("/", 1)[-1] for p in m["plots"])
    assert names == ["error.png", "teacher.png", "training.png", "worst_crops.png"]
    w, h = check_png(tmp_path / "p" / "worst_crops.png", (500, 800))  # 4 rows of target | decoded | error
    assert h > w
    check_png(tmp_path / "p" / "teacher.png", (600, 250))


def test_teacher_plot_keeps_a_strip_map_wide(tmp_path):
    """A map 16x wider than tall (a long strip of chunks) gets a wide panel, not a square
    one that squeezes it to a line."""
    pytest.importorskip("matplotlib")
    from intstream import plots

    rng = np.random.default_rng(0)
    strip, square = rng.random((16, 256)), rng.random((64, 64))
    w_strip, h_strip = check_png(plots.teacher_map([("strip", strip)], tmp_path / "strip.png"))
    w_sq, h_sq = check_png(plots.teacher_map([("square", square)], tmp_path / "square.png"))
    assert w_strip / h_strip > 2.5 * (w_sq / h_sq), (w_strip, h_strip, w_sq, h_sq)


def test_cli_modules_do_not_import_torch():
    code = "import sys, intstream.cli.eval, intstream.cli.export_weights; print('torch' in sys.modules, 'dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    for cmd in ("eval", "export-weights"):
        r = run_cli([cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output


def test_mesh_decode_returns_to_the_source_frame(sdf, tmp_path):
    """A store ingested from a mesh records box -> world; the decoded mesh overlays the source."""
    store = sdf["store"]
    meta = {**store.meta["sdf"], "transform": {"center": [10.0, -2.0, 3.0], "scale": 4.0}}
    w = load_weights(sdf["weights"])
    w.signal = {**w.signal, "sdf": meta}
    from intstream.decode import decode

    out = tmp_path / "world.ply"
    decode(w, out, device="cpu")
    v = trimesh.load(out, force="mesh").vertices
    assert np.allclose(v.mean(axis=0), [10.0, -2.0, 3.0], atol=0.05)
    assert abs(np.median(np.linalg.norm(v - [10.0, -2.0, 3.0], axis=1)) - 0.55 / 4) < 0.03
