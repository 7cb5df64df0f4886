"""Imaging formats users bring, and the ones viewers open (issue 13, item 3), via the real CLI.

Inputs are made in the test with the community's libraries (tifffile, ome-zarr) and the
oracle is those libraries' own decode: compressed TIFF tiles (JPEG, LZW, Deflate, JPEG
2000), pyramidal OME-TIFF and whole-slide suffixes with ``--level``, 16-bit colour PNG,
OME-Zarr images whose axes metadata decide channels and grid. Decode outputs (pyramidal
OME-TIFF, OME-Zarr with multiscales) are re-read with tifffile / ome-zarr, checking the
levels and axes a viewer (napari, QuPath) relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream import open_store
from intstream.cli import main
from intstream.testing import make_image, write_png


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(r) -> dict:
    assert r.exit_code == 0, (r.exit_code, r.output)
    return json.loads(r.stdout.splitlines()[-1])


def refused(r, *words) -> str:
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == "" and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in line, (w, line)
    return line


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
