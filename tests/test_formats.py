"""Imaging formats users bring, and the ones viewers open (issue 13, item 3), via the real CLI.

Inputs are made in the test with the community's libraries (tifffile, ome-zarr) and the
oracle is those libraries' own decode: compressed TIFF tiles (JPEG, LZW, Deflate, JPEG
2000), pyramidal OME-TIFF and whole-slide suffixes with ``--level``, 16-bit colour PNG,
OME-Zarr images whose axes metadata decide channels and grid. Decode outputs (pyramidal
OME-TIFF, OME-Zarr with multiscales) are re-read with tifffile / ome-zarr, checking the
levels and axes a viewer (napari, QuPath) relies on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream import open_store
from intstream.cli import main
from intstream.testing import cli_manifest, cli_refused, make_image, write_png

# ome-zarr's writer module declares a deprecated default argument at import time.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


ok, refused = cli_manifest, cli_refused


def stored(path) -> np.ndarray:
    return open_store(path).array[...]


def write_pyramid_tiff(path: Path, image: np.ndarray, levels: int = 3, *, compression="jpeg", ome=True,
                       tile=(64, 64)) -> list[np.ndarray]:
    """A tiled pyramidal (Sub)IFD TIFF of ``(h, w, 3)`` uint8, written by tifffile; returns the levels."""
    import tifffile

    pyramid = [image[:: 2**k, :: 2**k] for k in range(levels)]
    opts = dict(tile=tile, compression=compression, photometric="rgb")
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tif:
        tif.write(pyramid[0], subifds=levels - 1, metadata={"axes": "YXS"} if ome else None, **opts)
        for lvl in pyramid[1:]:
            tif.write(lvl, subfiletype=1, **opts)
    return pyramid


# -- compressed TIFF tiles -----------------------------------------------------------
@pytest.mark.parametrize("compression", ["jpeg", "lzw", "zlib", "jpeg2000", "zstd"])
def test_compressed_tiff_tiles(tmp_path, compression):
    import tifffile

    a = make_image((150, 200), 3, "uint8", seed=4)
    src = tmp_path / "c.tif"
    tifffile.imwrite(src, a, tile=(64, 64), compression=compression, photometric="rgb")
    m = ok(run("ingest", src, "-o", tmp_path / "c.zarr", "--chunks", "100,100"))
    assert m["shape"] == [150, 200] and m["channels"] == 3
    ref = tifffile.imread(src)  # the library's own decode (JPEG is lossy)
    np.testing.assert_array_equal(stored(tmp_path / "c.zarr"), ref)
    if compression != "jpeg":
        np.testing.assert_array_equal(ref, a)


# -- pyramidal and whole-slide TIFFs ---------------------------------------------------
def test_pyramidal_ome_tiff_levels(tmp_path):
    src = tmp_path / "slide.ome.tif"
    pyramid = write_pyramid_tiff(src, make_image((256, 320), 3, "uint8", seed=1))
    import tifffile

    with tifffile.TiffFile(src) as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 3
        refs = [tif.series[0].levels[k].asarray() for k in range(3)]
    m = ok(run("ingest", src, "-o", tmp_path / "l0.zarr"))
    assert m["shape"] == [256, 320]
    np.testing.assert_array_equal(stored(tmp_path / "l0.zarr"), refs[0])
    m = ok(run("ingest", src, "-o", tmp_path / "l2.zarr", "--level", "2"))
    assert m["shape"] == list(pyramid[2].shape[:2]) == [64, 80]
    np.testing.assert_array_equal(stored(tmp_path / "l2.zarr"), refs[2])
    info = open_store(tmp_path / "l2.zarr").meta["source_image"]
    assert info == {"format": "ome-tiff", "series": 0, "level": 2, "levels": 3, "axes": "YXS"}
    refused(run("ingest", src, "-o", tmp_path / "l3.zarr", "--level", "3"), "slide.ome.tif", "3 levels (0..2)")
    assert not (tmp_path / "l3.zarr").exists()


@pytest.mark.parametrize("suffix", [".svs", ".ndpi"])
def test_whole_slide_suffixes_accepted(tmp_path, suffix):
    src = tmp_path / f"scan{suffix}"
    write_pyramid_tiff(src, make_image((128, 192), 3, "uint8", seed=2), levels=2, ome=False)
    import tifffile

    with tifffile.TiffFile(src) as tif:
        ref = tif.series[0].levels[1].asarray()
    m = ok(run("ingest", src, "-o", tmp_path / "s.zarr", "--level", "1"))
    assert m["kind"] == "image" and m["shape"] == [64, 96]
    np.testing.assert_array_equal(stored(tmp_path / "s.zarr"), ref)


def test_level_refused_for_flat_formats(tmp_path):
    src = write_png(tmp_path / "a.png", make_image((20, 30), 3, "uint8"))
    refused(run("ingest", src, "-o", tmp_path / "a.zarr", "--level", "1"), "a.png", "one level")


# -- 16-bit colour PNG ---------------------------------------------------------------
@pytest.mark.parametrize("channels", [3, 4])
def test_16bit_colour_png_lossless(tmp_path, channels):
    a = make_image((40, 50), channels, "uint16", seed=channels)
    src = write_png(tmp_path / "d.png", a)  # the generator writes the PNG chunks itself
    m = ok(run("ingest", src, "-o", tmp_path / "d.zarr"))
    assert m["dtype"] == "uint16" and m["channels"] == channels
    np.testing.assert_array_equal(stored(tmp_path / "d.zarr"), a)


# -- OME-Zarr input ------------------------------------------------------------------
def write_ome_zarr(path: Path, data: np.ndarray, axes: str, scale_factors=(2,)):
    import zarr
    from ome_zarr.writer import write_image

    g = zarr.open_group(str(path), mode="w")
    write_image(data, g, axes=axes, scale_factors=scale_factors)
    return path


def test_ome_zarr_cyx_image_with_levels(tmp_path):
    cyx = np.moveaxis(make_image((64, 80), 3, "uint8", seed=3), -1, 0).copy()
    src = write_ome_zarr(tmp_path / "img.ome.zarr", cyx, "cyx")
    m = ok(run("ingest", src, "-o", tmp_path / "a.zarr", "--chunks", "32,32"))
    # the channel axis is c (3), not the 80 columns; the grid is y, x
    assert m["kind"] == "image" and m["shape"] == [64, 80] and m["channels"] == 3
    np.testing.assert_array_equal(stored(tmp_path / "a.zarr"), np.moveaxis(cyx, 0, -1))
    import zarr

    level1 = np.asarray(zarr.open_group(str(src), mode="r")["s1"])
    m = ok(run("ingest", src, "-o", tmp_path / "b.zarr", "--level", "1"))
    assert m["shape"] == list(level1.shape[1:])
    np.testing.assert_array_equal(stored(tmp_path / "b.zarr"), np.moveaxis(level1, 0, -1))
    meta = open_store(tmp_path / "b.zarr").meta["source_image"]
    assert meta["format"] == "ome-zarr" and meta["axes"] == ["c", "y", "x"] and meta["levels"] == 2
    refused(run("ingest", src, "-o", tmp_path / "c.zarr", "--level", "2"), "2 levels (0..1)")


def test_ome_zarr_tczyx_volume_is_an_array(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.integers(0, 4000, (1, 2, 6, 16, 20)).astype(np.uint16)  # one time point, 2 channels
    src = write_ome_zarr(tmp_path / "vol.ome.zarr", v, "tczyx", scale_factors=())
    m = ok(run("ingest", src, "-o", tmp_path / "v.zarr"))
    assert m["kind"] == "array" and m["shape"] == [6, 16, 20] and m["channels"] == 2
    np.testing.assert_array_equal(stored(tmp_path / "v.zarr"), np.moveaxis(v[0], 0, -1))
    refused(run("ingest", src, "-o", tmp_path / "w.zarr", "--kind", "image"), "3 space axes")


def test_ome_zarr_time_series_refused(tmp_path):
    v = np.zeros((3, 1, 8, 8), np.uint8)
    src = write_ome_zarr(tmp_path / "t.ome.zarr", v, "tcyx", scale_factors=())
    refused(run("ingest", src, "-o", tmp_path / "t.zarr"), "time series")


def test_plain_zarr_group_still_needs_one_array(tmp_path):
    import zarr

    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("a", shape=(4, 4, 1), dtype="uint8")
    g.create_array("b", shape=(4, 4, 1), dtype="uint8")
    refused(run("ingest", tmp_path / "g.zarr", "-o", tmp_path / "o.zarr"), "2 arrays")


# -- decode to viewer formats ----------------------------------------------------------
@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory):
    from intstream.testing import make_image_store

    d = tmp_path_factory.mktemp("fit")
    store = make_image_store(d / "s.zarr", (48, 64), chunks=(16, 32), channels=3, seed=2)
    ok(run("fit", store, "-o", d / "run", "--steps", "3", "--width", "16", "--depth", "2"))
    return d / "run"


SHAPE = ("128", "160")  # with a 64-sample pyramid top: levels 128x160, 64x80, 32x40


@pytest.fixture(autouse=True)
def small_pyramid_top(monkeypatch):
    """Halve down to 64 samples instead of 512, so small decodes have three levels (in-process CLI)."""
    import importlib

    # the module, not the intstream.decode function the package namespace exports
    monkeypatch.setattr(importlib.import_module("intstream.decode"), "PYRAMID_TOP", 64)


def test_decode_pyramidal_ome_tiff(fitted_run, tmp_path):
    import tifffile

    out = tmp_path / "o.ome.tif"
    ev = ok(run("eval", fitted_run, "--metrics", "none", "--decode", out, "--shape", ",".join(SHAPE)))
    assert ev["decoded"] == str(out)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.is_bigtiff
        series = tif.series[0]
        assert series.axes == "YXS"
        assert [lvl.shape for lvl in series.levels] == [(128, 160, 3), (64, 80, 3), (32, 40, 3)]
        assert tif.pages[0].is_tiled and tif.pages[0].subifds
        levels = [lvl.asarray() for lvl in series.levels]
        assert tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]["SizeC"] == 3
    flat = tmp_path / "flat.tif"  # level 0 is the plain decode at that shape
    ok(run("eval", fitted_run, "--metrics", "none", "--decode", flat, "--shape", ",".join(SHAPE)))
    np.testing.assert_array_equal(levels[0], tifffile.imread(flat))
    # level 1 renders the 2x finer grid (= level 0's) and box-averages it: within rounding
    box = levels[0].astype(np.float64).reshape(64, 2, 80, 2, 3).mean(axis=(1, 3))
    assert np.abs(levels[1] - box).max() <= 1.0


def test_decode_ome_zarr_multiscales_and_reingest(fitted_run, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "o.ome.zarr"
    ok(run("eval", fitted_run, "--metrics", "none", "--decode", out, "--shape", ",".join(SHAPE)))
    node = list(Reader(parse_url(str(out)))())[0]  # how napari's ome-zarr plugin reads it
    assert [a["name"] for a in node.metadata["axes"]] == ["c", "y", "x"]
    assert [tuple(d.shape) for d in node.data] == [(3, 128, 160), (3, 64, 80), (3, 32, 40)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0]]
    level0 = np.asarray(node.data[0])
    plain = tmp_path / "p.zarr"
    ok(run("eval", fitted_run, "--metrics", "none", "--decode", plain, "--shape", ",".join(SHAPE)))
    np.testing.assert_array_equal(np.moveaxis(level0, 0, -1), stored(plain))
    m = ok(run("ingest", out, "-o", tmp_path / "back.zarr"))  # our own OME-Zarr reader takes it back
    assert m["kind"] == "image" and m["shape"] == [128, 160] and m["channels"] == 3
    np.testing.assert_array_equal(stored(tmp_path / "back.zarr"), stored(plain))
