"""Bad input through the real CLI: exit 2, one line on stderr naming the file, stdout
empty, and nothing left behind (no output, no ``.name.tmp-*`` siblings)."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from PIL import Image

from intstream import InputError, open_store
from intstream.cli import main
from intstream.ingest import ingest
from intstream.testing import make_image, write_audio, write_png, write_tiled_tiff


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def assert_bad_input(result, name: str, out_dir: Path, *, expect_left=()):
    """Exit 2, no stdout, one stderr line naming ``name``, and ``out_dir`` holds only ``expect_left``."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    left = sorted(p.name for p in out_dir.iterdir())
    assert left == sorted(expect_left), left


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@pytest.fixture
def src_dir(tmp_path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


# -- sources that cannot be read ------------------------------------------------
def test_missing_file(src_dir, out_dir):
    r = run("ingest", src_dir / "nope.png", "-o", out_dir / "x.zarr")
    assert_bad_input(r, "nope.png", out_dir)
    assert "no such file" in r.stderr


def test_unreadable_file(src_dir, out_dir, monkeypatch):
    src = src_dir / "locked.png"
    Image.fromarray(make_image((8, 8))).save(src)
    real_open = builtins.open

    def deny(file, *a, **k):  # tests run as root, where chmod 000 does not stop reads
        if os.fspath(file) == str(src):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    r = run("ingest", src, "-o", out_dir / "x.zarr")
    assert_bad_input(r, "locked.png", out_dir)
    assert "Permission denied" in r.stderr


def test_directory_named_like_an_image(src_dir, out_dir):
    (src_dir / "folder.png").mkdir()
    assert_bad_input(run("ingest", src_dir / "folder.png", "-o", out_dir / "x.zarr"), "folder.png", out_dir)


@pytest.mark.parametrize("name", ["junk.png", "junk.jpg", "junk.webp", "junk.tif", "junk.wav", "junk.flac", "junk.npy"])
def test_corrupt_file(src_dir, out_dir, name):
    src = src_dir / name
    src.write_bytes(b"this is not what the suffix says " * 50)
    assert_bad_input(run("ingest", src, "-o", out_dir / "x.zarr"), name, out_dir)


def test_corrupt_tiff_tile_mid_file(src_dir, out_dir):
    """A damaged compressed tile fails the ingest after some blocks were written."""
    import tifffile

    src = write_tiled_tiff(src_dir / "bad.tif", (600, 600), 3, "uint8", tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(src) as tif:
        offset = int(tif.pages[0].dataoffsets[12])
    data = bytearray(src.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64
    src.write_bytes(bytes(data))
    r = run("ingest", src, "-o", out_dir / "x.zarr", "--chunks", "128,128")
    assert_bad_input(r, "bad.tif", out_dir)
    assert "corrupt" in r.stderr


def _good_sources(d: Path, data_dir: Path) -> dict[str, Path]:
    tif = write_tiled_tiff(d / "full.tif", (300, 300), 3, "uint8", tile=(64, 64))
    wav = write_audio(d / "full.wav", 1.0, channels=2)
    npy = d / "full.npy"
    np.save(npy, np.ones((50, 40, 2), np.float32))
    return {
        "png": data_dir / "kodak" / "kodim03.png",
        "jpg": _jpeg(d / "full.jpg"),
        "tif": tif,
        "wav": wav,
        "flac": data_dir / "librispeech" / "01.flac",
        "npy": npy,
    }


def _jpeg(path: Path) -> Path:
    Image.fromarray(make_image((200, 200))).save(path, quality=90)
    return path


@pytest.mark.parametrize("fmt", ["png", "jpg", "tif", "wav", "flac", "npy"])
def test_truncated_file(data_dir, src_dir, out_dir, fmt):
    full = _good_sources(src_dir, data_dir)[fmt]
    src = truncate(full, src_dir / f"cut.{fmt}", 0.6)
    assert_bad_input(run("ingest", src, "-o", out_dir / "x.zarr"), f"cut.{fmt}", out_dir)


@pytest.mark.parametrize("name", ["notes.txt", "README", "mesh.xyz"])
def test_unsupported_format(src_dir, out_dir, name):
    src = src_dir / name
    src.write_text("hello\n")
    r = run("ingest", src, "-o", out_dir / "x.zarr")
    assert_bad_input(r, name, out_dir)
    assert "unsupported format" in r.stderr


@pytest.mark.parametrize("fixture,kind", [("png", "audio"), ("wav", "image"), ("npy", "image"), ("png", "array")])
def test_kind_mismatch(data_dir, src_dir, out_dir, fixture, kind):
    src = _good_sources(src_dir, data_dir)[fixture]
    r = run("ingest", src, "-o", out_dir / "x.zarr", "--kind", kind)
    assert_bad_input(r, src.name, out_dir)
    assert f"--kind {kind}" in r.stderr


def test_chunks_that_do_not_fit(data_dir, out_dir):
    r = run("ingest", data_dir / "kodak" / "kodim01.png", "-o", out_dir / "x.zarr", "--chunks", "64,64,64")
    assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "--chunks" in r.stderr
    assert list(out_dir.iterdir()) == []


# -- empty or invalid values ------------------------------------------------------
@pytest.mark.parametrize("kind", ["empty-file", "wav", "npy", "npy-2d"])
def test_zero_length_signal(src_dir, out_dir, kind):
    if kind == "empty-file":
        src = src_dir / "empty.png"
        src.write_bytes(b"")
    elif kind == "wav":
        src = src_dir / "empty.wav"
        sf.write(src, np.zeros((0, 1), np.int16), 16000)
    elif kind == "npy":
        src = src_dir / "empty.npy"
        np.save(src, np.zeros((0, 3), np.float32))
    else:
        src = src_dir / "nochan.npy"
        np.save(src, np.zeros((5, 4, 0), np.float32))
    r = run("ingest", src, "-o", out_dir / "x.zarr")
    assert_bad_input(r, src.name, out_dir)


@pytest.mark.parametrize("where", ["start", "last-block"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_inf_in_array(src_dir, out_dir, value, where):
    a = np.random.default_rng(0).normal(size=(64, 64, 2)).astype(np.float32)
    a[(0, 0, 0) if where == "start" else (63, 63, 1)] = value
    np.save(src_dir / "bad.npy", a)
    # Small chunks: the bad value in the last block fails after others were written.
    r = run("ingest", src_dir / "bad.npy", "-o", out_dir / "x.zarr", "--chunks", "16,16")
    assert_bad_input(r, "bad.npy", out_dir)
    assert "NaN or Inf" in r.stderr


def test_nan_in_float_wav_and_tiff(src_dir, out_dir):
    x = np.zeros((5000, 1), np.float32)
    x[4000] = np.nan
    sf.write(src_dir / "nan.wav", x, 16000, subtype="FLOAT")
    assert_bad_input(run("ingest", src_dir / "nan.wav", "-o", out_dir / "a.zarr", "--chunks", "1000"), "nan.wav", out_dir)
    import tifffile

    img = np.ones((40, 40), np.float32)
    img[30, 30] = np.inf
    tifffile.imwrite(src_dir / "inf.tif", img, tile=(16, 16))
    assert_bad_input(run("ingest", src_dir / "inf.tif", "-o", out_dir / "i.zarr"), "inf.tif", out_dir)


# -- outputs ----------------------------------------------------------------------
def test_existing_output_without_overwrite(data_dir, out_dir):
    existing = out_dir / "x.zarr"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    r = run("ingest", data_dir / "kodak" / "kodim01.png", "-o", existing)
    assert_bad_input(r, "x.zarr", out_dir, expect_left=["x.zarr"])
    assert "--overwrite" in r.stderr
    assert (existing / "keep.txt").read_text() == "mine"  # untouched


def test_failed_overwrite_keeps_previous_store(data_dir, src_dir, out_dir):
    good = out_dir / "x.zarr"
    assert run("ingest", data_dir / "kodak" / "kodim01.png", "-o", good).exit_code == 0
    np.save(src_dir / "bad.npy", np.full((8, 8, 1), np.nan, np.float32))
    r = run("ingest", src_dir / "bad.npy", "-o", good, "--overwrite")
    assert_bad_input(r, "bad.npy", out_dir, expect_left=["x.zarr"])
    assert open_store(good).meta["source"]["name"] == "kodim01.png"


def test_output_inside_input(data_dir, tmp_path, out_dir):
    store = out_dir / "s.zarr"
    assert run("ingest", data_dir / "div2k" / "00.png", "-o", store).exit_code == 0
    r = run("ingest", store, "-o", store / "nested.zarr")
    assert_bad_input(r, "s.zarr", out_dir, expect_left=["s.zarr"])
    assert "inside the input" in r.stderr
    assert not (store / "nested.zarr").exists()
    assert not any(p.name.startswith(".nested") for p in store.iterdir())


def test_output_is_the_input(src_dir):
    src = src_dir / "same.npy"
    np.save(src, np.ones((4, 4, 1), np.float32))
    r = run("ingest", src, "-o", src, "--overwrite")
    assert_bad_input(r, "same.npy", src_dir, expect_left=["same.npy"])
    assert np.load(src).shape == (4, 4, 1)


def test_output_folder_missing(data_dir, out_dir):
    r = run("ingest", data_dir / "div2k" / "01.png", "-o", out_dir / "no" / "such" / "x.zarr")
    assert_bad_input(r, "x.zarr", out_dir)


def test_16bit_rgb_png(src_dir, out_dir):
    """No longer bad input: imagecodecs decodes it at 16 bits (tests/test_formats.py checks the values)."""
    write_png(src_dir / "deep.png", make_image((10, 12), 3, "uint16"))
    r = run("ingest", src_dir / "deep.png", "-o", out_dir / "x.zarr")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["dtype"] == "uint16"


# -- incomplete stores and interrupted ingests ------------------------------------
def _incomplete_store(path: Path) -> Path:
    import zarr

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.create_array("signal", shape=(4, 4, 1), dtype="uint8")
    g.attrs["intstream"] = {"format_version": 1, "kind": "image", "shape": [4, 4], "channels": 1,
                            "dtype": "uint8", "chunks": [4, 4], "shards": None, "complete": False}
    return path


def test_incomplete_store_refused_by_open_store_shown_by_info(tmp_path):
    store = _incomplete_store(tmp_path / "half.zarr")
    with pytest.raises(InputError, match="incomplete"):
        open_store(store)
    r = run("info", store)
    assert r.exit_code == 0
    assert json.loads(r.stdout)["complete"] is False


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError, InputError])
def test_interrupted_ingest_leaves_nothing(tmp_path, monkeypatch, exc):
    from intstream.readers.array import ArraySource

    np.save(tmp_path / "v.npy", np.ones((64, 64, 1), np.float32))
    real_read = ArraySource.read
    calls = []

    def read_then_fail(self, slices):
        calls.append(slices)
        if len(calls) > 2:
            raise exc("stop") if exc is not InputError else InputError(self.path, "stop")
        return real_read(self, slices)

    monkeypatch.setattr(ArraySource, "read", read_then_fail)
    out = tmp_path / "o" / "v.zarr"
    out.parent.mkdir()
    expected = KeyboardInterrupt if exc is KeyboardInterrupt else (InputError, RuntimeError)
    with pytest.raises(expected):
        ingest(tmp_path / "v.npy", out, chunks=(16, 16))
    assert len(calls) == 3
    assert list(out.parent.iterdir()) == []


def test_interrupted_cli_ingest_exits_130_and_cleans_up(tmp_path, monkeypatch):
    from intstream.readers.audio import Audio

    src = write_audio(tmp_path / "a.wav", 1.0)
    real_read = Audio.read
    calls = []

    def interrupt(self, slices):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_read(self, slices)

    monkeypatch.setattr(Audio, "read", interrupt)
    (tmp_path / "o").mkdir()
    r = run("ingest", src, "-o", tmp_path / "o" / "a.zarr", "--chunks", "1000")
    assert r.exit_code == 130 and r.stdout == ""
    assert list((tmp_path / "o").iterdir()) == []


def test_info_bad_store(tmp_path):
    (tmp_path / "plain").mkdir()
    for target, name in [(tmp_path / "missing.zarr", "missing.zarr"), (tmp_path / "plain", "plain")]:
        r = run("info", target)
        assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
        assert name in r.stderr


def test_info_bad_stdin_manifest():
    for text in ["", "not json\n", '{"stage": "ingest"}\n']:
        r = run("info", "-", input=text)
        assert r.exit_code == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
