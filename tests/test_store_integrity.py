"""A damaged store is refused through the real CLI, never read as zeros (issue 9, item 3).

Each case damages a small generated store the way disks and copies do (a chunk file
deleted, a chunk file overwritten, attributes edited) and checks `intstream info`, `fit`
(in core and out of core, where reads run inside Dask tasks) and `eval`: exit 2, one line
on stderr naming the store and the chunk, nothing on stdout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream import InputError, open_store
from intstream.cli import main
from intstream.testing import make_image_store

SHAPE, CHUNKS = (64, 96), (16, 32)  # 4 x 3 chunks
FAST = ["--steps", "2", "--width", "16", "--depth", "2"]
OOC = ["--out-of-core"]  # trains in rounds although the store would fit in core


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(r, *names):
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stdout == ""
    # Progress log lines may come first (non-TTY stderr); the refusal is one line, the last.
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in r.stderr, r.stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture
def store(tmp_path) -> Path:
    return make_image_store(tmp_path / "s.zarr", SHAPE, chunks=CHUNKS, channels=3, seed=2)


def chunk_file(store: Path, i: int, j: int) -> Path:
    return store / "signal" / "c" / str(i) / str(j) / "0"


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4:20] = b"not a blosc frame"[:16]
    path.write_bytes(bytes(data))


def edit_attrs(store: Path, **items) -> None:
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    meta = dict(g.attrs["intstream"])
    meta.update(items)
    g.attrs["intstream"] = meta


def fitted(store: Path, tmp_path: Path) -> Path:
    r = run("fit", store, "-o", tmp_path / "run", *FAST)
    assert r.exit_code == 0, r.output
    return tmp_path / "run"


# -- the record --------------------------------------------------------------------
def test_every_chunk_written_and_counted_zeros_included(tmp_path):
    """All-zero chunks are stored too (zarr skips them by default): absent always means damage."""
    from intstream.store import create_store

    with create_store(tmp_path / "z.zarr", kind="image", shape=(8, 8), channels=1, dtype="uint8",
                      chunks=(4, 4)) as w:
        for sl in w.blocks():
            w.write(sl, np.zeros((4, 4, 1), np.uint8))
    st = open_store(tmp_path / "z.zarr")
    assert st.meta["stored_chunks"] == 4
    assert sorted(p.relative_to(tmp_path / "z.zarr" / "signal").as_posix()
                  for p in (tmp_path / "z.zarr" / "signal" / "c").rglob("0") if p.is_file()) == \
        ["c/0/0/0", "c/0/1/0", "c/1/0/0", "c/1/1/0"]


# -- missing chunks ------------------------------------------------------------------
def test_missing_chunk_refused_at_open_by_info_fit_eval(store, tmp_path):
    run_dir = fitted(store, tmp_path)
    chunk_file(store, 2, 1).unlink()
    for args in (("info", store), ("fit", store, "-o", tmp_path / "run2", *FAST),
                 ("eval", run_dir, "--store", store)):
        line = assert_refused(run(*args), str(store), "signal/c/2/1/0", "missing")
    assert not (tmp_path / "run2").exists()
    assert "1 of 12" in line


def test_missing_shard_refused(tmp_path):
    from intstream.store import create_store

    with create_store(tmp_path / "big.zarr", kind="image", shape=(132, 132), channels=1, dtype="uint8",
                      chunks=(2, 2)) as w:  # 66 x 66 chunks: sharded, 17 x 17 shards
        assert w.meta["shards"] == [8, 8]
        for sl in w.blocks():
            w.write(sl, np.ones(tuple(s.stop - s.start for s in sl) + (1,), np.uint8))
    (tmp_path / "big.zarr" / "signal" / "c" / "16" / "16" / "0").unlink()  # the ragged corner shard
    assert_refused(run("info", tmp_path / "big.zarr"), "big.zarr", "signal/c/16/16/0", "missing")


@pytest.mark.parametrize("where", ["in_core", "out_of_core"])
def test_missing_chunk_never_read_as_zeros_when_the_backend_cannot_list(store, tmp_path, monkeypatch, where):
    """HTTP cannot list: then the strict store refuses the chunk when it is read (in a Dask task OOC)."""
    import intstream.store as store_mod

    monkeypatch.setattr(store_mod, "_listed_chunk_keys", lambda s: None)
    chunk_file(store, 3, 2).unlink()
    open_store(store)  # opens: nothing to list against
    with pytest.raises(InputError, match="signal/c/3/2/0 is missing"):
        open_store(store).read((slice(48, 64), slice(64, 96)))
    extra = OOC if where == "out_of_core" else []
    assert_refused(run("fit", store, "-o", tmp_path / "r", *FAST, *extra), str(store), "signal/c/3/2/0")


def test_targets_at_names_missing_chunk(store, monkeypatch):
    import intstream.store as store_mod

    monkeypatch.setattr(store_mod, "_listed_chunk_keys", lambda s: None)
    chunk_file(store, 0, 1).unlink()
    st = open_store(store)
    np.testing.assert_array_equal(st.targets_at(np.array([0, 1])).shape, (2, 3))
    with pytest.raises(InputError, match="signal/c/0/1/0"):
        st.targets_at(np.array([0, 40]))  # (0, 40) lies in chunk (0, 1)


# -- corrupt chunks ------------------------------------------------------------------
@pytest.mark.parametrize("where", ["in_core", "out_of_core"])
def test_corrupt_chunk_fit(store, tmp_path, where):
    corrupt(chunk_file(store, 1, 2))
    extra = OOC if where == "out_of_core" else []
    line = assert_refused(run("fit", store, "-o", tmp_path / "r", *FAST, *extra), str(store), "chunk (1, 2)", "signal/c/1/2/0", "corrupt")
    assert "[16, 64]" in line


def test_out_of_core_fit_is_really_out_of_core(store, tmp_path):
    r = run("fit", store, "-o", tmp_path / "r", *FAST, *OOC)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["out_of_core"] is True


def test_corrupt_chunk_eval_names_chunk(store, tmp_path):
    run_dir = fitted(store, tmp_path)
    corrupt(chunk_file(store, 3, 0))
    assert_refused(run("eval", run_dir, "--store", store), str(store), "chunk (3, 0)", "corrupt")


# -- attributes that disagree with the array -------------------------------------------
@pytest.mark.parametrize("items,words", [
    ({"shape": [64, 95]}, "shape"),
    ({"channels": 4}, "shape"),
    ({"dtype": "uint16"}, "dtype"),
    ({"dtype": "complex64"}, "dtype"),
    ({"shape": "64x96"}, "shape"),
    ({"chunks": [16, 16]}, "chunks"),
    ({"kind": "video"}, "kind"),
    ({"stored_chunks": 11}, "stored_chunks"),
    ({"normalisation": {"offset": 0}}, "normalisation"),
])
def test_attributes_disagreeing_with_array(store, tmp_path, items, words):
    edit_attrs(store, **items)
    for args in (("info", store), ("fit", store, "-o", tmp_path / "r", *FAST)):
        assert_refused(run(*args), str(store), words)
    assert not (tmp_path / "r").exists()


def test_stores_from_before_the_record_keep_reading_absent_chunks_as_zeros(store, tmp_path):
    """A store without ``stored_chunks`` was written when zarr skipped all-zero chunks."""
    import zarr

    g = zarr.open_group(str(store), mode="r+")
    meta = dict(g.attrs["intstream"])
    del meta["stored_chunks"]
    g.attrs["intstream"] = meta
    chunk_file(store, 0, 0).unlink()
    st = open_store(store)
    assert not st.read((slice(0, 16), slice(0, 32))).any()
    assert st.read((slice(16, 32), slice(0, 32))).any()


def test_input_error_survives_dask_worker_pickling():
    """Chunk tasks on distributed/process workers send the InputError back pickled."""
    import pickle

    err = pickle.loads(pickle.dumps(InputError("/data/s.zarr", "chunk (1, 2) is corrupt")))
    assert isinstance(err, InputError) and err.message == "/data/s.zarr: chunk (1, 2) is corrupt"
