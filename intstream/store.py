"""The signal store: one Zarr v3 group per signal (DESIGN §3).

``signal`` holds the samples on their grid with a trailing channel axis, in the
source's dtype, Blosc/Zstd-compressed, chunked for I/O and sharded when the chunk count
gets large. The group attribute ``intstream`` holds everything else. Coordinates are
never stored: `SignalStore` computes them from indices (see `normalize`).

A store is written by `create_store`, under a temporary name that is renamed into place
only when ingest finished; until then its ``complete`` flag is false and `open_store`
refuses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .atomic import atomic_output, check_output_path
from .errors import InputError
from .normalize import Normalisation, block_coords, flat_coords, normalisation_for

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "DEFAULT_CHUNKS",
    "SignalStore",
    "StoreWriter",
    "create_store",
    "open_store",
    "source_info",
    "block_slices",
]

FORMAT_VERSION = 1
KINDS = ("image", "audio", "sdf", "array")
# Chunk edge per grid axis; about 1-4 MB per chunk for the common dtypes.
DEFAULT_CHUNKS = {"image": 1024, "audio": 1 << 20, "sdf": 64, "array": 256}
# Above this many chunks, group them into shards (fewer files; one shard = SHARD_FACTOR^ndim chunks).
SHARD_ABOVE_CHUNKS = 4096
SHARD_FACTOR = 4
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


def source_info(path: str | os.PathLike) -> dict:
    """Name, size in bytes and sha256 of a source file (streamed, bounded memory)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():  # a Zarr store given as source: hash its metadata only
        for f in sorted(p.rglob("zarr.json")) + sorted(p.rglob(".zarray")):
            h.update(f.read_bytes())
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    else:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return {"name": p.name, "size": int(size), "sha256": h.hexdigest()}


def block_slices(shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    """Row-major rectangular blocks of ``block`` size covering ``shape`` (ragged at the ends)."""
    ranges = [range(0, n, b) for n, b in zip(shape, block)]
    for starts in itertools.product(*ranges):
        yield tuple(slice(s, min(s + b, n)) for s, b, n in zip(starts, block, shape))


def _chunking(kind: str, shape: tuple[int, ...], chunks: tuple[int, ...] | None):
    if chunks is None:
        edge = DEFAULT_CHUNKS[kind]
        chunks = tuple(min(edge, n) for n in shape)
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise InputError(None, f"--chunks {chunks} does not fit a {len(shape)}-D grid of shape {shape}")
    chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
    n_chunks = math.prod(math.ceil(n / c) for n, c in zip(shape, chunks))
    shards = None
    if n_chunks > SHARD_ABOVE_CHUNKS:
        shards = tuple(c * SHARD_FACTOR for c in chunks)
    return chunks, shards


class StoreWriter:
    """Writes blocks of a store being ingested; created by `create_store`.

    Tracks the value range and refuses NaN/Inf so that the normalisation can be fixed
    when the writer closes.
    """

    def __init__(self, group, array, meta: dict, source: str | None):
        self.group = group
        self.array = array
        self.meta = meta
        self.source = source
        self._lo = math.inf
        self._hi = -math.inf
        self.samples_written = 0

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def write_block(self) -> tuple[int, ...]:
        """The grid block size to write in: one shard if sharded, else one chunk."""
        return tuple(self.meta["shards"] or self.meta["chunks"])

    def blocks(self) -> Iterator[tuple[slice, ...]]:
        """Write-aligned blocks covering the grid."""
        return block_slices(self.grid_shape, self.write_block)

    def write(self, slices: tuple[slice, ...], values: np.ndarray) -> None:
        """Write stored-dtype values for a grid block; ``values`` has the channel axis last."""
        values = np.asarray(values)
        if values.ndim == len(slices):
            values = values[..., None]
        if values.size:
            if values.dtype.kind == "f":
                if not np.isfinite(values).all():
                    raise InputError(self.source, "contains NaN or Inf values")
            self._lo = min(self._lo, float(values.min()))
            self._hi = max(self._hi, float(values.max()))
        self.array[slices + (slice(None),)] = values.astype(self.array.dtype, copy=False)
        self.samples_written += math.prod(s.stop - s.start for s in slices)

    def update_meta(self, **items) -> None:
        self.meta.update(items)

    def _finish(self) -> None:
        kind, shape = self.meta["kind"], self.grid_shape
        value_range = None if self._lo > self._hi else (self._lo, self._hi)
        if self.meta.get("value_range") is None:
            self.meta["value_range"] = None if value_range is None else list(value_range)
        norm = normalisation_for(kind, self.meta["dtype"], shape, self.meta["value_range"])
        self.meta["normalisation"] = norm.to_dict()
        self.meta["complete"] = True
        self.group.attrs["intstream"] = self.meta


@contextlib.contextmanager
def create_store(
    out: str | os.PathLike,
    *,
    kind: str,
    shape: tuple[int, ...],
    channels: int,
    dtype: str | np.dtype,
    chunks: tuple[int, ...] | None = None,
    source: str | os.PathLike | None = None,
    meta: dict | None = None,
    overwrite: bool = False,
) -> Iterator[StoreWriter]:
    """Create a store under a temporary name; yield a `StoreWriter`; publish it on success.

    ``shape`` is the grid shape (without channels). ``meta`` adds kind-specific items
    (``sample_rate``, ``sdf``...). The store is renamed onto ``out`` and marked complete
    only when the block exits without an exception.
    """
    import zarr
    from zarr.codecs import BloscCodec

    if kind not in KINDS:
        raise InputError(None, f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    shape = tuple(int(n) for n in shape)
    if not shape or any(n <= 0 for n in shape) or channels <= 0:
        raise InputError(source, f"empty signal (grid shape {shape}, {channels} channels)")
    dt = np.dtype(dtype)
    if dt.name not in SUPPORTED_DTYPES:
        raise InputError(source, f"unsupported sample type {dt.name} (supported: {', '.join(SUPPORTED_DTYPES)})")
    inputs = (source,) if source is not None else ()
    out = check_output_path(out, overwrite=overwrite, inputs=inputs)
    chunks, shards = _chunking(kind, shape, chunks)
    full = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "shape": list(shape),
        "channels": int(channels),
        "dtype": dt.name,
        "chunks": list(chunks),
        "shards": None if shards is None else list(shards),
        "value_range": None,
        "source": source_info(source) if source is not None else None,
        "complete": False,
    }
    full.update(meta or {})
    with atomic_output(out) as tmp:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs["intstream"] = full
        array = group.create_array(
            "signal",
            shape=shape + (channels,),
            chunks=chunks + (channels,),
            shards=None if shards is None else shards + (channels,),
            dtype=dt,
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if dt.itemsize > 1 else "bitshuffle"),
            fill_value=0,
        )
        writer = StoreWriter(group, array, full, None if source is None else os.fspath(source))
        yield writer
        if writer.samples_written < math.prod(shape):
            raise RuntimeError(f"ingest wrote {writer.samples_written} of {math.prod(shape)} samples")
        writer._finish()


class SignalStore:
    """A complete signal store opened for reading.

    Attributes
    ----------
    path
        The store folder.
    meta
        The ``intstream`` group attributes (see DESIGN §3).
    norm
        The `Normalisation` between stored values and targets (``None`` only for an
        incomplete store opened with ``require_complete=False``).
    """

    def __init__(self, path: Path, group, meta: dict):
        self.path = path
        self.group = group
        self.meta = meta
        self.array = group["signal"]
        # An incomplete store (shown by `intstream info`) has no normalisation yet.
        norm = meta.get("normalisation")
        self.norm = Normalisation.from_dict(norm) if norm else None

    # -- shape -------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape, without the channel axis."""
        return tuple(self.meta["shape"])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def n_samples(self) -> int:
        return math.prod(self.shape)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Grid chunk shape (the I/O unit for reads)."""
        return tuple(self.meta["chunks"])

    @property
    def nbytes(self) -> int:
        """Uncompressed size of the signal in bytes."""
        return self.n_samples * self.channels * np.dtype(self.meta["dtype"]).itemsize

    def chunk_slices(self) -> list[tuple[slice, ...]]:
        """Row-major list of the grid slices of every chunk (ragged at the edges)."""
        return list(block_slices(self.shape, self.chunks))

    # -- reads -------------------------------------------------------------------
    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Stored values of a grid block, channel axis last."""
        return self.array[tuple(slices) + (slice(None),)]

    def block_samples(self, slices: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Normalised ``(coords (n, ndim), targets (n, channels))`` of a grid block, row-major."""
        values = self.read(slices)
        targets = self.norm.targets(values).reshape(-1, self.channels)
        return block_coords(self.shape, self.norm.extent, tuple(slices)), targets

    def block_flat_index(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Row-major flat indices (into the whole grid) of the samples of a block."""
        axes = [np.arange(s.start, s.stop, dtype=np.int64) for s in slices]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.ravel_multi_index(tuple(m.reshape(-1) for m in mesh), self.shape)

    def coords_at(self, flat_index: np.ndarray) -> np.ndarray:
        """Normalised coordinates of samples given by flat indices."""
        return flat_coords(self.shape, self.norm.extent, flat_index)

    def targets_at(self, flat_index: np.ndarray) -> np.ndarray:
        """Normalised targets of samples given by flat indices, ``(n, channels)``."""
        flat_index = np.asarray(flat_index, dtype=np.int64)
        c = self.channels
        # Zarr's coordinate selection needs an index on every axis, the channel one included.
        idx = tuple(np.repeat(ix, c) for ix in np.unravel_index(flat_index, self.shape))
        values = self.array.vindex[idx + (np.tile(np.arange(c), len(flat_index)),)]
        return self.norm.targets(values).reshape(-1, c)

    def load_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(coords, targets)`` in memory (in-core training only)."""
        everything = tuple(slice(0, n) for n in self.shape)
        return self.block_samples(everything)

    def info(self) -> dict:
        """The metadata plus the store path and sizes, for `intstream info`."""
        return {"store": str(self.path), **self.meta, "n_samples": self.n_samples, "nbytes": self.nbytes}


def open_store(path: str | os.PathLike, *, require_complete: bool = True) -> SignalStore:
    """Open a signal store; a missing, foreign or incomplete store is an `InputError`."""
    import zarr

    p = Path(path).absolute()
    if not p.exists():
        raise InputError(p, "no such store")
    if not (p / "zarr.json").is_file():
        raise InputError(p, "not a Zarr v3 store (no zarr.json)")
    try:
        group = zarr.open_group(str(p), mode="r")
        meta = dict(group.attrs.get("intstream") or {})
    except Exception as exc:  # zarr raises several types for broken metadata
        raise InputError(p, f"unreadable store ({exc.__class__.__name__}: {exc})") from None
    if not meta:
        raise InputError(p, "not an intstream signal store (no 'intstream' attributes)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(p, f"store format {meta.get('format_version')} is newer than this intstream ({FORMAT_VERSION})")
    if require_complete and not meta.get("complete"):
        raise InputError(p, "store is incomplete (ingest did not finish); ingest it again")
    if "signal" not in group:
        raise InputError(p, "store has no 'signal' array")
    return SignalStore(p, group, meta)
