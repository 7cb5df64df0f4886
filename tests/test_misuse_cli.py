"""Misuse through the real CLI: every refusal is exit 2, exactly one ``Error: ...`` line on
stderr naming the option or file, no traceback, stdout empty, and nothing left behind
(no run directory, store or decoded file, not even an empty folder).

One parametrised test per class of misuse (issue 9, item 3):

- usage errors: one line, not click's usage block;
- NaN/Inf/overflowing numbers, sizes and seeds;
- options refused before the run directory exists;
- decode outputs that are an input, inside one, or too big for memory or disk;
- image decompression bombs;
- meshes with NaN/Inf vertices (and OBJ files in other encodings read correctly).
"""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream.cli import main

TET = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 3 2\nf 1 2 4\nf 1 4 3\nf 2 3 4\n"
BIG = "1" * 30  # a 30-digit number


def run(*args, env=None, cwd=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_refused(result, names, before: list[str] | None = None, folder: Path | None = None) -> str:
    """Exit 2, stdout empty, one ``Error:`` line on stderr holding each of ``names``; ``folder`` unchanged."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for name in [names] if isinstance(names, str) else names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in result.stderr and "Usage:" not in result.stderr
    if folder is not None:
        assert listing(folder) == before, "left behind: " + ", ".join(sorted(set(listing(folder)) - set(before)))
    return lines[0]


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid 1-bit PNG of ``side``² pixels that compresses to ~50 kB (built row block by row block)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    rows = (b"\0" * (1 + (side + 7) // 8)) * 500  # filter byte + packed zero bits, 500 rows
    idat = b"".join(z.compress(rows) for _ in range(side // 500)) + z.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """A tiny image store and a 1-step run of it (shared, read-only for the tests)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fitted")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "img.png")
    r = run("ingest", root / "img.png", "-o", root / "img.zarr")
    assert r.exit_code == 0, r.output
    r = run("fit", root / "img.zarr", "-o", root / "img.run", "--steps", "1", "--width", "8", "--depth", "2",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "other.png")
    r = run("ingest", root / "other.png", "-o", root / "other.zarr")
    assert r.exit_code == 0, r.output
    return {"root": root, "store": root / "img.zarr", "run": root / "img.run", "other": root / "other.zarr"}


# -- 1. usage errors: one line -------------------------------------------------------

USAGE = [
    (["fit", "--steps", "0"], "Error: --steps: 0 is not in the range 1<=x<=2147483647"),
    (["fit", "--bogus"], "--bogus: no such option"),
    (["fit", "--stepz", "3"], ("did you mean", "--steps")),
    (["fit", "--steps"], "--steps"),
    (["fit", "--device", "tpu"], "--device: 'tpu' is not one of"),
    (["fit", "--strategy", "best"], "--strategy"),
    (["ingest"], "SOURCE: missing"),
    (["ingest", "x.png", "--kind", "movie"], "--kind"),
    (["export-weights", "run"], "--output: missing"),
    (["eval", "run", "--batch", "0"], "--batch"),
    (["info", "a", "b"], "unexpected extra argument"),
    (["bogus"], "bogus: no such command"),
    (["--bogus"], "--bogus: no such option"),
]


@pytest.mark.parametrize("args,expected", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_error_is_one_line(args, expected, tmp_path):
    before = listing(tmp_path)
    assert_refused(run(*args), expected if isinstance(expected, tuple) else [expected], before, tmp_path)


def test_usage_error_one_line_in_a_real_process(tmp_path):
    p = subprocess.run([sys.executable, "-m", "intstream.cli", "fit", "--steps", "0"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == ["Error: --steps: 0 is not in the range 1<=x<=2147483647"]


def test_help_still_shows_usage():
    r = run("fit", "--help")
    assert r.exit_code == 0 and "Usage:" in r.stdout


# -- 2. NaN, Inf and overflowing numbers ------------------------------------------------

NUMBERS = [
    ("fit", "--lr", "nan"),
    ("fit", "--lr", "1e999"),
    ("fit", "--lr", "-1"),
    ("fit", "--ratio", "nan"),
    ("fit", "--random-share", "nan"),
    ("fit", "--omega", "nan"),
    ("fit", "--first-omega", "inf"),
    ("fit", "--target-psnr", "nan"),
    ("fit", "--time-budget", "inf"),
    ("fit", "--checkpoint-every", "nan"),
    ("fit", "--seed", BIG),
    ("fit", "--seed", "-1"),
    ("fit", "--steps", BIG),
    ("fit", "--width", BIG),
    ("fit", "--log-every", BIG),
    ("fit", "--memory-budget", "inf"),
    ("fit", "--memory-budget", "nan"),
    ("fit", "--memory-budget", "0"),
    ("fit", "--memory-budget", "-1G"),
    ("fit", "--memory-budget", "lots"),
    ("fit", "--memory-budget", "1e400"),
    ("fit", "--capacity", "1e30"),
    ("fit", "--overlap", "nan"),
    ("fit", "--bpp", "inf"),
    ("export-weights", "--bits-per-sample", "nan"),
    ("export-weights", "--kbps", "1e30"),
    ("ingest", "--chunks", f"1,{BIG}"),
    ("ingest", "--resolution", BIG),
    ("ingest", "--max-pixels", "0"),
    ("eval", "--batch", BIG),
]


@pytest.mark.parametrize("command,option,value", NUMBERS, ids=[f"{c} {o} {v[:8]}" for c, o, v in NUMBERS])
def test_bad_number_names_the_option(command, option, value, fitted, tmp_path):
    source = {"fit": fitted["store"], "ingest": fitted["root"] / "img.png", "eval": fitted["run"],
              "export-weights": fitted["run"]}[command]
    out = {"fit": tmp_path / "x.run", "ingest": tmp_path / "x.zarr", "eval": None,
           "export-weights": tmp_path / "w.safetensors"}[command]
    args = [command, source, option, value] + (["-o", out] if out else ["--decode", tmp_path / "x.png"])
    before = listing(tmp_path)
    assert_refused(run(*args), option, before, tmp_path)


def test_library_config_refuses_non_finite():
    """The Python API refuses what the CLI refuses (a ValueError, and exit 2 through a stage)."""
    from intstream.errors import InputError
    from intstream.fit import FitConfig

    FitConfig(lr=1e-3, seed=2**40, time_budget=10.0)  # fine
    for bad in ({"lr": math.nan}, {"omega0": math.inf}, {"ratio": math.nan}, {"seed": 10**30},
                {"memory_budget": 0}, {"time_budget": math.inf}, {"checkpoint_every": math.nan}, {"steps": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))) as info:
            FitConfig(**bad)
        assert isinstance(info.value, InputError)


# -- 3. every option checked before the run directory exists -------------------------------

def _bad_fit_cases():
    cases = [
        (["--interval-schedule", "bogus"], "--interval-schedule"),
        (["--interval-schedule", "fixed:0"], "--interval-schedule"),
        (["--ratio-schedule", "decay:2"], "--ratio-schedule"),
        (["--ratio-schedule", "cosin"], "--ratio-schedule"),
        (["--steps", "0"], "--steps"),
        (["--lr", "nan"], "--lr"),
        (["--memory-budget", "1K"], "--memory-budget"),  # no memory plan fits
    ]
    try:
        import torch

        if not torch.cuda.is_available():
            cases.append((["--device", "cuda"], "--device cuda"))
    except ImportError:  # pragma: no cover
        pass
    return cases


@pytest.mark.parametrize("extra,name", _bad_fit_cases(), ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_refused_fit_leaves_no_run_dir(extra, name, fitted, tmp_path):
    out = tmp_path / "runs" / "deep" / "x.run"  # parents too: none may be created
    before = listing(tmp_path)
    assert_refused(run("fit", fitted["store"], "-o", out, "--steps", "1", *extra), name, before, tmp_path)


@pytest.mark.parametrize("where", ["store", "inside"])
def test_fit_run_dir_inside_the_store_is_refused(where, fitted, tmp_path):
    store = fitted["store"]
    out = store if where == "store" else store / "run"
    before = listing(fitted["root"])
    # (-o STORE itself is also refused as a non-empty folder that is no run directory.)
    assert_refused(run("fit", store, "-o", out, "--steps", "1", "--overwrite"), [str(out)], before, fitted["root"])


def test_library_fit_bad_teacher_option_leaves_nothing(fitted, tmp_path):
    from intstream.errors import InputError
    from intstream.fit import FitConfig, fit

    with pytest.raises(InputError, match="interval schedule"):
        fit(fitted["store"], tmp_path / "r.run", FitConfig(steps=1, interval_schedule="sometimes"))
    assert listing(tmp_path) == []


# -- 4. decode outputs that are inputs, or too big -------------------------------------------

DECODES = [
    ("inside-store", lambda f, t: ["--decode", f["store"] / "x.png"], "inside the input"),
    ("the-store", lambda f, t: ["--decode", f["store"], "--overwrite"], "inside the input"),
    ("png-memory", lambda f, t: ["--decode", t / "x.png", "--shape", "100000,100000"], "in memory"),
    ("tif-disk", lambda f, t: ["--decode", t / "x.tif", "--shape", "10000000,10000000"], "free on"),
    ("zarr-disk", lambda f, t: ["--decode", t / "x.zarr", "--shape", f"{BIG},2"], "free on"),
    ("bad-shape", lambda f, t: ["--decode", t / "x.png", "--shape", "16,nan"], "--shape"),
    ("folder-as-png", lambda f, t: (t / "d.png").mkdir() or ["--decode", t / "d.png", "--overwrite"], "folder"),
    ("non-store-zarr", lambda f, t: ((t / "d.zarr").mkdir(), (t / "d.zarr" / "keep").write_text("x"))
     and ["--decode", t / "d.zarr", "--overwrite"], "not a Zarr store"),
    ("plot-inside-store", lambda f, t: ["--plot", f["store"] / "plots"], "inside the input"),
    ("wrong-store", lambda f, t: ["--store", f["other"], "--plot", t / "plots", "--decode", t / "x.png"],
     "does not match"),
]


@pytest.mark.parametrize("make,name", [d[1:] for d in DECODES], ids=[d[0] for d in DECODES])
def test_decode_refused_up_front(make, name, fitted, tmp_path):
    args = make(fitted, tmp_path)  # (may make what the decode must not replace)
    before, before_store = listing(tmp_path), listing(fitted["root"])
    assert_refused(run("eval", fitted["run"], "--metrics", "none", *args), name, before, tmp_path)
    assert listing(fitted["root"]) == before_store


@pytest.mark.parametrize("suffix", [".png", ".zarr"])
def test_decode_overwrite_replaces_a_decode(suffix, fitted, tmp_path):
    out = tmp_path / f"d{suffix}"
    for extra in ([], ["--overwrite"]):
        r = run("eval", fitted["run"], "--metrics", "none", "--decode", out, *extra)
        assert r.exit_code == 0, r.output


def test_mesh_decode_too_big_for_memory_is_refused(tmp_path):
    (tmp_path / "t.obj").write_text(TET)
    assert run("ingest", tmp_path / "t.obj", "-o", tmp_path / "t.zarr", "--resolution", "8").exit_code == 0
    r = run("fit", tmp_path / "t.zarr", "-o", tmp_path / "t.run", "--steps", "1", "--width", "8", "--depth", "2",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    before = listing(tmp_path)
    assert_refused(run("eval", tmp_path / "t.run", "--metrics", "none", "--decode", tmp_path / "m.ply",
                       "--shape", "4096,4096,4096"), ["m.ply", "in memory"], before, tmp_path)


# -- 5. decompression bombs ---------------------------------------------------------------------

def test_png_bomb_is_not_decoded(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    before = listing(tmp_path)
    line = assert_refused(run("ingest", bomb, "-o", tmp_path / "b.zarr"), ["bomb.png", "20000x20000", "--max-pixels"],
                          before, tmp_path)
    assert "INTSTREAM_MAX_PIXELS" in line


def test_single_strip_tiff_bomb_is_not_decoded(tmp_path):
    """A TIFF streams tile by tile, but a one-strip TIFF is the whole image in one piece."""
    import tifffile

    a = np.zeros((2000, 1500), np.uint8)
    tifffile.imwrite(tmp_path / "strip.tif", a, rowsperstrip=2000, compression="zlib")
    tifffile.imwrite(tmp_path / "tiled.tif", a, tile=(256, 256), compression="zlib")
    before = listing(tmp_path)
    assert_refused(run("ingest", tmp_path / "strip.tif", "-o", tmp_path / "s.zarr", "--max-pixels", "1000000"),
                   ["strip.tif", "1500x2000", "--max-pixels"], before, tmp_path)
    r = run("ingest", tmp_path / "tiled.tif", "-o", tmp_path / "t.zarr", "--max-pixels", "1000000")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("kind", ["array", "sdf"])
def test_zarr_with_a_huge_chunk_is_not_decoded(kind, tmp_path):
    import zarr

    shape = (40, 40, 40) if kind == "sdf" else (2000, 1500, 1)
    z = zarr.create_array(str(tmp_path / "big.zarr"), shape=shape, chunks=shape, dtype="float32")
    z[...] = 0.5
    before = listing(tmp_path)
    assert_refused(run("ingest", tmp_path / "big.zarr", "--kind", kind, "-o", tmp_path / "o.zarr",
                       "--max-pixels", "10000"), ["big.zarr", "chunks of", "--max-pixels"], before, tmp_path)


@pytest.mark.parametrize("how", ["option", "env"])
def test_pixel_limit_can_be_set(how, fitted, tmp_path):
    png = fitted["root"] / "img.png"  # 16 x 16 = 256 pixels
    opt = ["--max-pixels", "100"] if how == "option" else []
    env = {"INTSTREAM_MAX_PIXELS": "100"} if how == "env" else None
    before = listing(tmp_path)
    assert_refused(run("ingest", png, "-o", tmp_path / "a.zarr", *opt, env=env), ["img.png", "16x16"], before, tmp_path)
    r = run("ingest", png, "-o", tmp_path / "a.zarr", "--max-pixels", "256")
    assert r.exit_code == 0, r.output


# -- 6. meshes: NaN/Inf vertices refused, any encoding read ----------------------------------------

def _ply_with_inf(path: Path) -> Path:
    import trimesh

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, np.inf]], dtype=np.float64)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    path.write_bytes(trimesh.Trimesh(v, f, process=False).export(file_type="ply"))
    return path


MESHES = [
    ("nan-used", lambda p: p.with_suffix(".obj").write_text(TET.replace("v 0 0 1", "v 0 nan 1")), "line 4"),
    ("nan-unused", lambda p: p.with_suffix(".obj").write_text(TET + "v nan 0 0\n"), "line 9"),
    ("inf-utf16", lambda p: p.with_suffix(".obj").write_bytes((TET + "v -inf 0 0\n").encode("utf-16")), "NaN or Inf"),
    ("inf-ply", lambda p: _ply_with_inf(p.with_suffix(".ply")), "NaN or Inf"),
]


@pytest.mark.parametrize("make,detail", [m[1:] for m in MESHES], ids=[m[0] for m in MESHES])
def test_mesh_with_nonfinite_vertices_is_refused(make, detail, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make(src / "mesh")
    path = next(src.iterdir())
    before = listing(tmp_path)
    assert_refused(run("ingest", path, "-o", tmp_path / "m.zarr", "--resolution", "8"), [path.name, detail],
                   before, tmp_path)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_obj_in_other_encodings_reads_like_utf8(encoding, tmp_path):
    from intstream.store import open_store

    header = "# mod\u00e8le r\u00e9sum\u00e9 \u00a9 caf\u00e9\ng groupe_\u00e9t\u00e9\no objet_\u00e0\n"
    (tmp_path / "u.obj").write_text(TET, encoding="utf-8")
    (tmp_path / "e.obj").write_bytes((header + TET).encode(encoding))
    with pytest.raises(UnicodeDecodeError):
        (tmp_path / "e.obj").read_bytes().decode("utf-8")
    stores = []
    for name in ("u", "e"):
        r = run("ingest", tmp_path / f"{name}.obj", "-o", tmp_path / f"{name}.zarr", "--resolution", "8")
        assert r.exit_code == 0, r.output
        stores.append(open_store(json.loads(r.stdout)["store"]))
    a, b = (np.asarray(s.array[...]) for s in stores)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_ply_with_latin1_header_comment_reads(encoding, tmp_path):
    import trimesh

    from intstream.store import open_store

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    plain = trimesh.Trimesh(v, f, process=False).export(file_type="ply", encoding=encoding)
    i = plain.index(b"\n", plain.index(b"format")) + 1
    (tmp_path / "u.ply").write_bytes(plain)
    (tmp_path / "e.ply").write_bytes(plain[:i] + "comment caf\xe9 r\xe9sum\xe9\nobj_info \xa9\n".encode("latin-1") + plain[i:])
    stores = []
    for name in ("u", "e"):
        r = run("ingest", tmp_path / f"{name}.ply", "-o", tmp_path / f"{name}.zarr", "--resolution", "8")
        assert r.exit_code == 0, r.output
        stores.append(open_store(json.loads(r.stdout)["store"]))
    np.testing.assert_array_equal(*(np.asarray(s.array[...]) for s in stores))
