"""Ingest: stream a source file into a signal store, block by block."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import InputError
from .normalize import TARGETS
from .progress import Progress
from .readers import open_reader, source_path
from .rundir import StopSignals
from .store import create_store, open_store

__all__ = ["ingest", "default_store_path"]


def default_store_path(source: str | os.PathLike) -> Path:
    """``<stem>.zarr`` in the current folder (sources are often on read-only shares)."""
    return Path.cwd() / (Path(source).name.split(".")[0] + ".zarr")


def ingest(
    source: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    kind: str = "auto",
    chunks: tuple[int, ...] | None = None,
    resolution: int = 256,
    targets: str | None = None,
    level: int = 0,
    overwrite: bool = False,
    progress: bool | None = None,
) -> dict:
    """Convert ``source`` into a complete signal store at ``output``.

    Returns the manifest: store path, kind, shape, channels, dtype, chunks, bytes
    (uncompressed), stored bytes, seconds. Nothing is left at ``output`` on failure.

    While it writes, ingest holds ``output``'s lock (a second ingest of the same output
    exits 2) and first removes temporaries of ``output`` that killed ingests left. A
    SIGTERM/SIGINT stops it between blocks: the temporary store is removed and
    `intstream.errors.Interrupted` raised (the CLI exits 143/130).

    ``level`` picks the resolution level of a pyramidal TIFF (SVS, NDPI, OME-TIFF) or an
    OME-Zarr image (0, the default: full resolution).

    ``targets`` maps the values to ``unit`` [0, 1] (the paper's) or ``signed`` [-1, 1]
    training targets; None takes the kind's default (`intstream.normalize.DEFAULT_TARGETS`).
    """
    if targets is not None and targets not in TARGETS:
        raise InputError(None, f"--targets: {targets!r} is not one of {', '.join(TARGETS)}")
    t0 = time.perf_counter()
    src = source_path(source)  # a local Path, or a Zarr / OME-Zarr source at a URL
    out = os.fspath(output) if output is not None else default_store_path(src)  # a path or a store URL
    with StopSignals() as stop:
        return _ingest(src, out, stop, kind=kind, chunks=chunks, resolution=resolution, targets=targets, level=level,
                       overwrite=overwrite, progress=progress, t0=t0)


def _ingest(src: Path, out: Path, stop: StopSignals, *, kind, chunks, resolution, targets, overwrite, progress, level=0,
            t0) -> dict:
    reader = open_reader(src, kind, resolution=resolution, level=level)
    try:
        with create_store(
            out,
            kind=reader.kind,
            shape=reader.shape,
            channels=reader.channels,
            dtype=reader.dtype,
            chunks=chunks,
            source=src,
            meta={**(reader.meta or {}), "targets": targets},
            overwrite=overwrite,
        ) as writer:
            blocks = list(writer.blocks())
            with Progress(len(blocks), f"ingest {src.name}", enabled=progress, unit="block") as bar:
                for slices in blocks:
                    stop.check()  # between blocks: zarr's writes are never cut mid-way
                    try:
                        values = reader.read(slices)
                    except InputError:
                        raise
                    except Exception as exc:  # decoder errors surface mid-stream for truncated files
                        raise InputError(src, f"corrupt or truncated data ({exc.__class__.__name__}: {exc})") from None
                    writer.write(slices, values)
                    bar.update()
                stop.check()
    finally:
        reader.close()
    store = open_store(out)
    stored = store.stored_bytes()
    return {
        "stage": "ingest",
        "store": str(store.path),
        "kind": store.kind,
        "shape": list(store.shape),
        "channels": store.channels,
        "dtype": store.meta["dtype"],
        "chunks": store.meta["chunks"],
        "shards": store.meta["shards"],
        "bytes": store.nbytes,
        "stored_bytes": stored,
        "seconds": round(time.perf_counter() - t0, 3),
        "source": store.meta["source"]["name"],
    }
