"""Stores anywhere fsspec reaches (issue 13, item 2), through the real CLI.

A store served over HTTP on 127.0.0.1 (``http.server`` in a thread) is fitted in core
and out of core (the Dask chunk tasks reopen it by URL), evaluated against the URL the
checkpoint recorded, and refused cleanly when a chunk is missing (HTTP cannot list: the
strict store catches it on read). ``memory://`` and ``file://`` are read and written
in-process; ``http://`` output is refused.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from intstream import open_store
from intstream.cli import main
from intstream.testing import cli_manifest, cli_refused, make_image, make_image_store, write_png

FAST = ["--steps", "3", "--width", "16", "--depth", "2"]
# ome-zarr's writer module declares a deprecated default argument at import time.
pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated class Scaler:DeprecationWarning")


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


ok, refused = cli_manifest, cli_refused


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


class _Ranged(_Quiet):
    """Also answers ``Range: bytes=a-b`` / ``bytes=-n`` (http.server ignores them; S3 and nginx do not)."""

    def send_head(self):
        spec = self.headers.get("Range")
        if not spec or not spec.startswith("bytes="):
            return super().send_head()
        try:
            data = Path(self.translate_path(self.path)).read_bytes()
        except OSError:
            self.send_error(404)
            return None
        a, b = spec[len("bytes="):].split("-")
        start, end = (max(len(data) - int(b), 0), len(data)) if a == "" else (int(a), len(data) if b == "" else int(b) + 1)
        body = data[start:end]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


def _serve(root: Path, handler):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def served(tmp_path):
    """``(folder, base URL)``: files under ``folder`` served read-only on 127.0.0.1."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_store(served):
    root, base = served
    make_image_store(root / "g.zarr", (48, 64), chunks=(16, 32), channels=3, seed=5)
    return root / "g.zarr", f"{base}/g.zarr"


def test_info_fit_eval_from_http(http_store, tmp_path):
    local, url = http_store
    info = ok(run("info", url))
    assert info["store"] == url and info["shape"] == [48, 64] and info["complete"] is True
    fit = ok(run("fit", url, "-o", tmp_path / "run", *FAST))
    assert fit["store"] == url and fit["steps"] == 3
    # eval finds the store through the URL the checkpoint recorded (no --store)
    ev = ok(run("eval", tmp_path / "run"))
    assert ev["store"] == url and np.isfinite(ev["metrics"]["psnr"])
    # the same weights scored against the local copy give the same figure
    ev_local = ok(run("eval", tmp_path / "run", "--store", local))
    assert ev_local["metrics"]["psnr"] == pytest.approx(ev["metrics"]["psnr"], abs=1e-6)


def test_out_of_core_fit_from_http(http_store, tmp_path):
    _, url = http_store
    fit = ok(run("fit", url, "-o", tmp_path / "run", *FAST, "--out-of-core"))
    assert fit["out_of_core"] is True and fit["store"] == url


def test_fit_pipes_an_http_ingest_manifest(http_store, tmp_path):
    _, url = http_store
    manifest = json.dumps({"stage": "ingest", "store": url}) + "\n"
    assert ok(run("fit", "-", "-o", tmp_path / "run", *FAST, input=manifest))["store"] == url


def test_missing_chunk_over_http_refused_not_zeros(http_store, tmp_path):
    local, url = http_store
    (local / "signal" / "c" / "2" / "1" / "0").unlink()
    ok(run("info", url))  # metadata only; HTTP cannot list the chunks
    for extra in ([], ["--out-of-core"]):
        refused(run("fit", url, "-o", tmp_path / f"run{len(extra)}", *FAST, *extra), url, "signal/c/2/1/0", "missing")


def test_http_errors(served, tmp_path):
    _, base = served
    refused(run("info", f"{base}/nothing.zarr"), "nothing.zarr", "no such store")
    refused(run("info", "http://127.0.0.1:9/x.zarr"), "cannot reach")  # port 9: nothing listens
    src = write_png(tmp_path / "a.png", make_image((20, 30), 3, "uint8"))
    refused(run("ingest", src, "-o", f"{base}/out.zarr"), "read-only")


def test_memory_store_ingest_fit_eval(tmp_path):
    url = f"memory://intstream-test-{uuid.uuid4().hex}/m.zarr"
    src = write_png(tmp_path / "a.png", make_image((40, 56), 3, "uint8", seed=1))
    ing = ok(run("ingest", src, "-o", url, "--chunks", "16,16"))
    assert ing["store"] == url and ing["stored_bytes"] > 0
    np.testing.assert_array_equal(open_store(url).array[...], make_image((40, 56), 3, "uint8", seed=1))
    refused(run("ingest", src, "-o", url), url, "exists")
    ok(run("ingest", src, "-o", url, "--overwrite"))
    ok(run("fit", url, "-o", tmp_path / "run", *FAST, "--out-of-core"))
    ev = ok(run("eval", tmp_path / "run", "--store", url))
    assert ev["store"] == url and np.isfinite(ev["metrics"]["psnr"])


def test_failed_memory_ingest_leaves_nothing(tmp_path):
    import fsspec

    bad = np.ones((32, 32, 1), np.float32)
    bad[-1, -1] = np.nan  # found in the last block, after others were written in place
    np.save(tmp_path / "bad.npy", bad)
    name = f"intstream-test-{uuid.uuid4().hex}"
    refused(run("ingest", tmp_path / "bad.npy", "-o", f"memory://{name}/b.zarr", "--chunks", "8,8"), "NaN")
    assert not fsspec.filesystem("memory").exists(f"/{name}/b.zarr")


def test_file_url_round_trips_as_a_path(tmp_path):
    src = write_png(tmp_path / "a.png", make_image((20, 30), 3, "uint8"))
    ing = ok(run("ingest", src, "-o", f"file://{tmp_path}/f.zarr"))
    assert ing["store"] == str(tmp_path / "f.zarr") and (tmp_path / "f.zarr" / "zarr.json").is_file()
    assert ok(run("info", f"file://{tmp_path}/f.zarr"))["store"] == str(tmp_path / "f.zarr")


def test_decode_to_memory_and_file_url_stores(http_store, tmp_path):
    _, url = http_store
    ok(run("fit", url, "-o", tmp_path / "run", *FAST))
    out = f"memory://intstream-test-{uuid.uuid4().hex}/d.zarr"
    ev = ok(run("eval", tmp_path / "run", "--decode", out))
    assert ev["decoded"] == out
    dec = open_store(out)
    assert dec.shape == (48, 64) and dec.meta["complete"] is True
    ev = ok(run("eval", tmp_path / "run", "--metrics", "none", "--decode", f"file://{tmp_path}/d.zarr", "--shape", "24,32"))
    assert ev["decoded"] == str(tmp_path / "d.zarr") and open_store(tmp_path / "d.zarr").shape == (24, 32)
    refused(run("eval", tmp_path / "run", "--decode", "memory://x/d.png"), "only a .zarr")


def test_ingest_ome_zarr_and_zarr_array_from_urls(served, tmp_path):
    """Public OME-Zarr lives on HTTP/S3: ingest reads it (and plain Zarr arrays) by URL."""
    import zarr
    from ome_zarr.writer import write_image

    root, base = served
    cyx = np.moveaxis(make_image((40, 48), 3, "uint8", seed=6), -1, 0).copy()
    write_image(cyx, zarr.open_group(str(root / "img.ome.zarr"), mode="w"), axes="cyx", scale_factors=(2,))
    m = ok(run("ingest", f"{base}/img.ome.zarr", "-o", tmp_path / "a.zarr", "--level", "1"))
    assert m["kind"] == "image" and m["shape"] == [20, 24] and m["channels"] == 3
    level1 = np.asarray(zarr.open_group(str(root / "img.ome.zarr"), mode="r")["s1"])
    np.testing.assert_array_equal(open_store(tmp_path / "a.zarr").array[...], np.moveaxis(level1, 0, -1))
    src = open_store(tmp_path / "a.zarr").meta["source"]
    assert src["url"] == f"{base}/img.ome.zarr" and src["size"] is None and len(src["sha256"]) == 64

    url = f"memory://intstream-test-{uuid.uuid4().hex}/v.zarr"
    v = np.random.default_rng(2).normal(size=(6, 7, 2)).astype(np.float32)
    zarr.create_array(url, shape=v.shape, chunks=(3, 7, 2), dtype="float32")[...] = v
    m = ok(run("ingest", url, "-o", tmp_path / "v.zarr"))
    assert m["kind"] == "array" and m["shape"] == [6, 7]
    np.testing.assert_array_equal(open_store(tmp_path / "v.zarr").array[...], v)
    refused(run("ingest", f"{base}/nothing.zarr", "-o", tmp_path / "n.zarr"), "nothing.zarr", "no Zarr array or group")


def test_sharded_store_over_http_needs_range_requests(tmp_path):
    """Sharded stores are read by byte range: a server that ignores Range is refused, not misread."""
    from intstream.store import create_store

    root = tmp_path / "www"
    root.mkdir()
    a = make_image((132, 130), 1, "uint8", seed=8)
    with create_store(root / "sh.zarr", kind="image", shape=(132, 130), channels=1, dtype="uint8",
                      chunks=(2, 2)) as w:  # 66 x 65 chunks: sharded
        for sl in w.blocks():
            w.write(sl, a[sl])
    for handler, ranged in ((_Quiet, False), (_Ranged, True)):
        server, base = _serve(root, handler)
        try:
            r = run("info", f"{base}/sh.zarr")
            if not ranged:
                refused(r, "Range")
                continue
            assert ok(r)["shards"] == [8, 8]
            region = (slice(6, 20), slice(100, 130))  # parts of 4 shards, the ragged edge included
            np.testing.assert_array_equal(open_store(f"{base}/sh.zarr").read(region), a[region])
        finally:
            server.shutdown()
            server.server_close()
