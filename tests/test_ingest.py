"""Ingest round trips: the stored ``signal`` equals the decoded source, dtype kept.

Oracles: Pillow's own decode (PNG/JPEG/WebP), soundfile's decode (audio), the generator
in `intstream.testing` (tiled TIFFs, stores), numpy/zarr (arrays).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from PIL import Image

from intstream import open_store
from intstream.cli import main
from intstream.ingest import ingest
from intstream.store import SHARD_ABOVE_CHUNKS
from intstream.testing import (
    make_audio,
    make_image,
    make_image_store,
    write_audio,
    write_png,
    write_tiled_tiff,
)


def stored(path) -> np.ndarray:
    """The whole stored signal, channel axis last."""
    return open_store(path).array[...]


def cli_ingest(*args) -> dict:
    result = CliRunner().invoke(main, ["ingest", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr  # progress is silent when stderr is not a TTY
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def pil_decode(path) -> np.ndarray:
    with Image.open(path) as im:
        a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


# -- real images ------------------------------------------------------------------
@pytest.mark.parametrize("name", [f"kodim{i:02d}.png" for i in range(1, 13)])
def test_kodak_round_trip(data_dir, tmp_path, name):
    src = data_dir / "kodak" / name
    out = tmp_path / "k.zarr"
    m = ingest(src, out)
    ref = pil_decode(src)
    got = stored(out)
    assert got.dtype == np.uint8 and got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    assert m["kind"] == "image" and m["shape"] == list(ref.shape[:2]) and m["channels"] == 3
    assert m["bytes"] == ref.nbytes and m["dtype"] == "uint8"


@pytest.mark.parametrize("name", ["00.png", "01.png"])
def test_div2k_round_trip(data_dir, tmp_path, name):
    src = data_dir / "div2k" / name
    ingest(src, tmp_path / "d.zarr", chunks=(200, 300))  # ragged chunk grid
    np.testing.assert_array_equal(stored(tmp_path / "d.zarr"), pil_decode(src))


def test_manifest_and_info_through_cli(data_dir, tmp_path):
    src = data_dir / "kodak" / "kodim04.png"
    m = cli_ingest(src, "-o", tmp_path / "k4.zarr", "--chunks", "256,256")
    for key in ("kind", "store", "shape", "dtype", "chunks", "bytes", "seconds"):
        assert key in m
    assert m["store"] == str(tmp_path / "k4.zarr")
    assert m["chunks"] == [256, 256] and m["shape"] == [768, 512]
    info = CliRunner().invoke(main, ["info", m["store"]])
    assert info.exit_code == 0
    meta = json.loads(info.stdout)
    assert meta["complete"] is True and meta["source"]["name"] == "kodim04.png"
    assert len(meta["source"]["sha256"]) == 64


# -- normalisation ----------------------------------------------------------------
def test_normalisation_round_trip_integer(data_dir, tmp_path):
    ingest(data_dir / "kodak" / "kodim05.png", tmp_path / "i.zarr")
    ingest(data_dir / "librispeech" / "00.flac", tmp_path / "a.zarr")
    write_png(tmp_path / "g16.png", make_image((40, 50), 1, "uint16"))
    ingest(tmp_path / "g16.png", tmp_path / "g.zarr")
    for name in ("i.zarr", "a.zarr", "g.zarr"):
        store = open_store(tmp_path / name)
        x = store.array[...]
        t = store.norm.targets(x)
        assert t.dtype == np.float32
        lo = 1.0 - store.norm.span  # unit targets in [0, 1], signed ones in [-1, 1]
        assert lo <= t.min() and t.max() <= 1.0
        back = store.norm.inverse(t)
        assert back.dtype == x.dtype
        np.testing.assert_array_equal(back, x)


def test_normalisation_round_trip_float(tmp_path):
    a = np.random.default_rng(0).normal(3.0, 10.0, (30, 20, 2)).astype(np.float32)
    np.save(tmp_path / "f.npy", a)
    ingest(tmp_path / "f.npy", tmp_path / "f.zarr")
    store = open_store(tmp_path / "f.zarr")
    t = store.norm.targets(store.array[...])
    assert store.norm.span == 2.0  # arrays default to signed targets (benchmarks/bench_targets.py)
    assert t.min() == pytest.approx(-1.0) and t.max() == pytest.approx(1.0)
    back = store.norm.inverse(t)
    assert back.dtype == np.float32
    # float32 targets cannot carry every float32 value exactly: a few ulps of the range
    np.testing.assert_allclose(back, a, rtol=0, atol=4 * np.finfo(np.float32).eps * (a.max() - a.min()))


# -- generated images -------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("channels,planar", [(1, False), (3, False), (3, True)])
def test_tiled_tiff_ragged(tmp_path, channels, planar, dtype):
    shape = (1000, 1300)
    src = write_tiled_tiff(tmp_path / "t.tif", shape, channels, dtype, tile=(256, 256), seed=3, planar=planar)
    m = ingest(src, tmp_path / "t.zarr", chunks=(384, 384))  # chunk and tile grids don't align
    got = stored(tmp_path / "t.zarr")
    assert got.dtype == np.dtype(dtype) and m["channels"] == channels
    np.testing.assert_array_equal(got, make_image(shape, channels, dtype, seed=3))


def test_bigtiff_rgba_and_float(tmp_path):
    src = write_tiled_tiff(tmp_path / "a.btf", (300, 200), 4, "uint8", tile=(64, 128), seed=1)
    ingest(src, tmp_path / "a.zarr", chunks=(100, 100))
    np.testing.assert_array_equal(stored(tmp_path / "a.zarr"), make_image((300, 200), 4, "uint8", seed=1))
    src = write_tiled_tiff(tmp_path / "f.tif", (100, 90), 1, "float32", tile=(32, 32), seed=2, bigtiff=False)
    ingest(src, tmp_path / "f.zarr", chunks=(50, 50))
    store = open_store(tmp_path / "f.zarr")
    ref = make_image((100, 90), 1, "float32", seed=2)
    np.testing.assert_array_equal(store.array[...], ref)
    assert store.meta["value_range"] == [float(ref.min()), float(ref.max())]


def test_tiff_never_read_whole(tmp_path, monkeypatch):
    """Every read goes to tifffile's Zarr store one tile at a time, never `asarray`."""
    import tifffile

    src = write_tiled_tiff(tmp_path / "t.tif", (600, 500), 3, "uint8", tile=(128, 128), seed=0)

    def forbidden(*a, **k):
        raise AssertionError("TIFF decoded whole")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", forbidden)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", forbidden)
    ingest(src, tmp_path / "t.zarr", chunks=(256, 256))
    np.testing.assert_array_equal(stored(tmp_path / "t.zarr"), make_image((600, 500), 3, "uint8", seed=0))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_8bit_gray_rgb_rgba(tmp_path, channels):
    a = make_image((70, 90), channels, "uint8", seed=channels)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    Image.fromarray(a[..., 0] if channels == 1 else a, mode).save(tmp_path / "x.png")
    ingest(tmp_path / "x.png", tmp_path / "x.zarr")
    got = stored(tmp_path / "x.zarr")
    assert got.shape == (70, 90, channels)
    np.testing.assert_array_equal(got, a)


def test_png_16bit_gray(tmp_path):
    a = make_image((64, 48), 1, "uint16", seed=5)
    write_png(tmp_path / "g.png", a)
    ingest(tmp_path / "g.png", tmp_path / "g.zarr")
    got = stored(tmp_path / "g.zarr")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_png_16bit_colour_kept_at_16_bits(tmp_path, channels):
    """Pillow decodes 16-bit colour PNGs to 8 bits; ingest decodes them with imagecodecs instead."""
    a = make_image((20, 30), channels, "uint16")
    write_png(tmp_path / "c.png", a)
    ingest(tmp_path / "c.png", tmp_path / "c.zarr")
    got = stored(tmp_path / "c.zarr")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, a)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_lossy_formats_match_pillow_decode(tmp_path, fmt, suffix):
    src = tmp_path / f"x{suffix}"
    Image.fromarray(make_image((120, 160), 3, "uint8", seed=7)).save(src, fmt, quality=85)
    ingest(src, tmp_path / "x.zarr", chunks=(64, 64))
    np.testing.assert_array_equal(stored(tmp_path / "x.zarr"), pil_decode(src))


def test_sharded_store_round_trip(tmp_path):
    a = make_image((262, 261), 3, "uint8", seed=9)
    Image.fromarray(a).save(tmp_path / "s.png")
    m = ingest(tmp_path / "s.png", tmp_path / "s.zarr", chunks=(4, 4))  # ragged shards and chunks
    assert 66 * 66 > SHARD_ABOVE_CHUNKS and m["shards"] is not None
    store = open_store(tmp_path / "s.zarr")
    assert store.array.shards is not None
    np.testing.assert_array_equal(store.array[...], a)


def test_make_image_store_streams_same_image(tmp_path):
    path = make_image_store(tmp_path / "g.zarr", (130, 170), chunks=(32, 48), channels=3, seed=4)
    store = open_store(path)
    assert store.kind == "image" and store.chunks == (32, 48)
    np.testing.assert_array_equal(store.array[...], make_image((130, 170), 3, "uint8", seed=4))


# -- audio ------------------------------------------------------------------------
@pytest.mark.parametrize("name", [f"{i:02d}.flac" for i in range(5)])
def test_librispeech_round_trip(data_dir, tmp_path, name):
    src = data_dir / "librispeech" / name
    m = ingest(src, tmp_path / "a.zarr")
    ref, rate = sf.read(src, dtype="int16", always_2d=True)
    store = open_store(tmp_path / "a.zarr")
    got = store.array[...]
    assert got.dtype == np.int16 and m["kind"] == "audio"
    np.testing.assert_array_equal(got, ref)
    assert store.meta["sample_rate"] == rate == 16000


@pytest.mark.parametrize("subtype,dtype", [("PCM_16", "int16"), ("FLOAT", "float32"), ("PCM_24", "int32")])
def test_stereo_wav(tmp_path, subtype, dtype):
    src = write_audio(tmp_path / "s.wav", 0.5, sample_rate=22050, channels=2, subtype=subtype, seed=1)
    ingest(src, tmp_path / "s.zarr")
    store = open_store(tmp_path / "s.zarr")
    got = store.array[...]
    ref, _ = sf.read(src, dtype=dtype, always_2d=True)
    assert got.dtype == np.dtype(dtype) and got.shape == (11025, 2)
    np.testing.assert_array_equal(got, ref)
    assert store.meta["sample_rate"] == 22050
    if subtype == "FLOAT":  # the generator's float samples survive bit for bit
        np.testing.assert_array_equal(got, make_audio(0.5, 22050, 2, seed=1))


def test_wav_longer_than_a_chunk(tmp_path):
    """Several blocks: each block read must start where the previous one ended."""
    src = write_audio(tmp_path / "l.wav", 2.0, sample_rate=16000, channels=3, seed=2, block=7000)
    m = cli_ingest(src, "-o", tmp_path / "l.zarr", "--chunks", "5000")
    assert m["chunks"] == [5000] and m["shape"] == [32000]
    ref, _ = sf.read(src, dtype="int16", always_2d=True)
    np.testing.assert_array_equal(stored(tmp_path / "l.zarr"), ref)


def test_wav_seeks_for_out_of_order_blocks(tmp_path):
    from intstream.readers.audio import open_audio

    src = write_audio(tmp_path / "o.wav", 1.0, sample_rate=8000, channels=1, seed=3)
    ref, _ = sf.read(src, dtype="int16", always_2d=True)
    reader = open_audio(src)
    try:
        for start in (6000, 0, 3000, 7999):
            s = slice(start, min(start + 1000, 8000))
            np.testing.assert_array_equal(reader.read((s,)), ref[s])
    finally:
        reader.close()


@pytest.mark.parametrize("suffix,subtype", [(".ogg", "VORBIS"), (".mp3", "MPEG_LAYER_III")])
def test_compressed_audio_matches_soundfile(tmp_path, suffix, subtype):
    src = tmp_path / f"c{suffix}"
    try:
        write_audio(src, 1.5, sample_rate=16000, channels=2, subtype=subtype, seed=4)
    except Exception as exc:  # libsndfile built without this codec
        pytest.skip(f"cannot write {subtype}: {exc}")
    ingest(src, tmp_path / "c.zarr", chunks=(4096,))
    ref, rate = sf.read(src, dtype="float32", always_2d=True)
    store = open_store(tmp_path / "c.zarr")
    assert store.meta["sample_rate"] == rate
    if subtype == "VORBIS":
        np.testing.assert_array_equal(store.array[...], ref)
    else:  # libsndfile's mpg123 path differs by an ulp between block and whole reads
        np.testing.assert_allclose(store.array[...], ref, rtol=0, atol=1e-6)


# -- arrays -----------------------------------------------------------------------
def test_npy_nd_with_channels(tmp_path):
    a = np.random.default_rng(1).integers(0, 60000, (12, 20, 30, 2)).astype(np.uint16)
    np.save(tmp_path / "v.npy", a)
    m = ingest(tmp_path / "v.npy", tmp_path / "v.zarr", chunks=(5, 8, 16))
    assert m["kind"] == "array" and m["shape"] == [12, 20, 30] and m["channels"] == 2
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), a)


def test_npy_float64_cast_to_float32(tmp_path):
    a = np.random.default_rng(2).normal(size=(40, 3))
    np.save(tmp_path / "d.npy", a)
    ingest(tmp_path / "d.npy", tmp_path / "d.zarr")
    got = stored(tmp_path / "d.zarr")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a.astype(np.float32))


def test_zarr_array_and_group(tmp_path):
    import zarr

    a = np.random.default_rng(3).normal(size=(17, 23, 3)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "src.zarr"), shape=a.shape, chunks=(5, 7, 3), dtype="float32")
    z[...] = a
    ingest(tmp_path / "src.zarr", tmp_path / "a.zarr", chunks=(8, 8))
    np.testing.assert_array_equal(stored(tmp_path / "a.zarr"), a)
    g = zarr.open_group(str(tmp_path / "grp.zarr"), mode="w")
    g.create_array("only", shape=a.shape, dtype="float32")[...] = a
    ingest(tmp_path / "grp.zarr", tmp_path / "g.zarr")
    np.testing.assert_array_equal(stored(tmp_path / "g.zarr"), a)


def test_overwrite_replaces_store(data_dir, tmp_path):
    out = tmp_path / "o.zarr"
    ingest(data_dir / "kodak" / "kodim01.png", out)
    ingest(data_dir / "kodak" / "kodim02.png", out, overwrite=True)
    np.testing.assert_array_equal(stored(out), pil_decode(data_dir / "kodak" / "kodim02.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.zarr"]


def test_default_output_in_cwd(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = ingest(data_dir / "div2k" / "00.png")
    assert Path(m["store"]) == tmp_path / "00.zarr"
