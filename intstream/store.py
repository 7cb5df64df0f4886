"""The signal store: one Zarr v3 group per signal (DESIGN §3).

``signal`` holds the samples on their grid with a trailing channel axis, in the
source's dtype, Blosc/Zstd-compressed, chunked for I/O and sharded when the chunk count
gets large. The group attribute ``intstream`` holds everything else. Coordinates are
never stored: `SignalStore` computes them from indices (see `normalize`).

A store is written by `create_store`, under a temporary name that is renamed into place
only when ingest finished; until then its ``complete`` flag is false and `open_store`
refuses it.

Where: a local path, or a URL fsspec reaches (zarr's ``FsspecStore``): ``file://``,
``http(s)://`` (read-only), ``memory://``, ``s3://``/``gs://`` with s3fs/gcsfs.
Backends that cannot rename a folder (object stores, memory) get the store written in
place with ``complete`` set by the very last write. `SignalStore.path` is the canonical
string (`store_location`), recorded by checkpoints and reopened by Dask chunk tasks.

Integrity: every chunk (every shard, when sharded) is written, zeros included
(``write_empty_chunks``), and ``stored_chunks`` records how many. `open_store` checks the
listing against that record wherever the backend can list, and reads go through a strict
store for which a missing chunk is an error, never zarr's fill value. A chunk that does
not decode, or attributes that disagree with the array, are an `InputError` naming the
store (and the chunk).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import re
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
    "MissingChunkError",
    "store_location",
    "store_exists",
    "local_store_path",
    "url_scheme",
]

FORMAT_VERSION = 1
KINDS = ("image", "audio", "sdf", "array")
# Chunk edge per grid axis; about 1-4 MB per chunk for the common dtypes.
DEFAULT_CHUNKS = {"image": 1024, "audio": 1 << 20, "sdf": 64, "array": 256}
# Above this many chunks, group them into shards (fewer files; one shard = SHARD_FACTOR^ndim chunks).
SHARD_ABOVE_CHUNKS = 4096
SHARD_FACTOR = 4
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "int32", "float32")


# -- where a store lives: a local path or any URL fsspec reaches ------------------------
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
READ_ONLY_SCHEMES = ("http", "https")
# Backends that cannot rename a folder: a store is written in place, ``complete`` set last.
NO_RENAME_NOTE = "written in place, 'complete' set last (no atomic rename on this backend)"


def url_scheme(location: str | os.PathLike) -> str | None:
    """The URL scheme of ``location`` in lower case (``None`` for a plain path)."""
    m = _SCHEME.match(os.fspath(location))
    return m.group(1).lower() if m else None


def store_location(location: str | os.PathLike) -> str:
    """The canonical string for a store: an absolute path for local stores (``file://``
    URLs included), else the URL without a trailing slash. It round-trips through
    `open_store`, checkpoints and manifests."""
    s = os.fspath(location)
    scheme = url_scheme(s)
    if scheme is None:
        return str(Path(s).absolute())
    if scheme == "file":
        from urllib.parse import unquote, urlparse

        u = urlparse(s)
        local = u.path if u.netloc in ("", "localhost") else u.netloc + u.path
        return str(Path(unquote(local)).absolute())
    return s.rstrip("/")


def local_store_path(location: str | os.PathLike) -> Path | None:
    """The local folder of a store location, or ``None`` for a remote one."""
    loc = store_location(location)
    return None if url_scheme(loc) else Path(loc)


def _fsspec_store(url: str, *, read_only: bool, storage_options: dict | None = None):
    """A `zarr.storage.FsspecStore` for ``url``; a missing backend is an `InputError`.

    Credentials and options come from ``storage_options`` or fsspec's own configuration
    (``FSSPEC_S3_ANON=true``, ``~/.config/fsspec/``, the cloud SDKs' environment).
    """
    from zarr.storage import FsspecStore

    scheme = url_scheme(url)
    try:
        return FsspecStore.from_url(url, storage_options=storage_options, read_only=read_only)
    except ImportError as exc:
        extra = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(scheme)
        hint = f" (pip install {extra})" if extra else ""
        raise InputError(url, f"{scheme}:// stores need an fsspec backend that is not installed{hint}: {exc}") from None
    except ValueError as exc:
        raise InputError(url, f"cannot open a {scheme}:// store ({exc})") from None


def _sync(coro):
    from zarr.core.sync import sync

    return sync(coro)


def store_exists(location: str | os.PathLike) -> bool:
    """Whether a store (its ``zarr.json``) exists at ``location``; unreachable is ``False``."""
    local = local_store_path(location)
    if local is not None:
        return (local / "zarr.json").is_file()
    try:
        return bool(_sync(_fsspec_store(store_location(location), read_only=True).exists("zarr.json")))
    except InputError:
        return False
    except Exception:
        return False


def store_cache_key(location: str | os.PathLike) -> tuple:
    """A key that changes when a local store is rewritten (for per-process open caches)."""
    loc = store_location(location)
    local = local_store_path(loc)
    if local is None:
        return (loc,)
    st = os.stat(local / "zarr.json")
    return (loc, st.st_mtime_ns, st.st_size)


def source_info(path: str | os.PathLike) -> dict:
    """Name, size in bytes and sha256 of a source file (streamed, bounded memory).

    A source at a URL (a Zarr/OME-Zarr) hashes its root metadata; its size is ``None``
    where the backend cannot add it up (HTTP).
    """
    scheme = url_scheme(path)
    if scheme not in (None, "file"):
        return _remote_source_info(os.fspath(path), scheme)
    p = Path(store_location(path))
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


def _remote_source_info(url: str, scheme: str) -> dict:
    from fsspec import url_to_fs

    fs, root = url_to_fs(url)
    h = hashlib.sha256()
    for name in ("zarr.json", ".zattrs", ".zgroup", ".zarray"):
        try:
            h.update(fs.cat_file(f"{root.rstrip('/')}/{name}"))
        except (FileNotFoundError, OSError):
            continue
        except Exception:  # aiohttp's errors for a missing URL
            continue
    size = None
    if scheme not in READ_ONLY_SCHEMES:
        try:
            size = int(fs.du(root, total=True))
        except Exception:
            size = None
    return {"name": url.rstrip("/").rsplit("/", 1)[-1], "url": url, "size": size, "sha256": h.hexdigest()}


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


SIGNAL_CHUNK_PREFIX = "signal/c/"


class MissingChunkError(Exception):
    """A chunk of ``signal`` is absent from the store (zarr would read it as its fill value)."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(key)


_STRICT_STORE = None


def strict_store(store):
    """``store`` wrapped so that reading an absent ``signal`` chunk raises `MissingChunkError`.

    Zarr reads a chunk the store does not hold as the fill value (zeros here); a store
    whose every chunk was written (see `create_store`) must never do that silently.
    """
    global _STRICT_STORE
    if _STRICT_STORE is None:
        from zarr.storage import WrapperStore

        class StrictStore(WrapperStore):
            strict = True  # off for stores written before chunks were all stored and counted

            async def get(self, key, prototype, byte_range=None):
                value = await self._store.get(key, prototype, byte_range)
                if value is None and self.strict and key.startswith(SIGNAL_CHUNK_PREFIX):
                    raise MissingChunkError(key)
                return value

            async def get_partial_values(self, prototype, key_ranges):
                key_ranges = list(key_ranges)
                values = await self._store.get_partial_values(prototype, key_ranges)
                for (key, _), value in zip(key_ranges, values):
                    if value is None and self.strict and key.startswith(SIGNAL_CHUNK_PREFIX):
                        raise MissingChunkError(key)
                return values

        _STRICT_STORE = StrictStore
    return _STRICT_STORE(store)


def _expected_chunk_keys(array, meta: dict) -> list[str]:
    """Store keys of every stored object of ``signal`` (shards when sharded), row-major."""
    block = meta.get("shards") or meta["chunks"]
    grid = [range(math.ceil(n / b)) for n, b in zip(meta["shape"], block)]
    return [SIGNAL_CHUNK_PREFIX.removesuffix("c/") + array.metadata.encode_chunk_key(c + (0,))
            for c in itertools.product(*grid)]


def _listed_chunk_keys(store) -> set[str] | None:
    """The ``signal`` chunk keys a zarr store lists, or ``None`` if it cannot list (HTTP)."""
    from zarr.core.sync import sync

    async def collect():
        return {k async for k in store.list_prefix(SIGNAL_CHUNK_PREFIX)}

    if not getattr(store, "supports_listing", True):
        return None
    try:
        return sync(collect())
    except Exception:  # no listing here (permissions, backend): the strict store still refuses on read
        return None


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

    def _finish(self) -> None:
        kind, shape = self.meta["kind"], self.grid_shape
        value_range = None if self._lo > self._hi else (self._lo, self._hi)
        if self.meta.get("value_range") is None:
            self.meta["value_range"] = None if value_range is None else list(value_range)
        norm = normalisation_for(kind, self.meta["dtype"], shape, self.meta["value_range"], self.meta.get("targets"))
        self.meta["normalisation"] = norm.to_dict()
        expected = _expected_chunk_keys(self.array, self.meta)
        present = _listed_chunk_keys(self.group.store)
        missing = [k for k in expected if k not in present]
        if present is None or missing:
            raise RuntimeError(f"ingest left {len(missing)} of {len(expected)} chunks unwritten (first: {missing[:1]})")
        self.meta["stored_chunks"] = len(expected)
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

    ``out`` is a local path (published atomically by rename) or a writable URL
    (``file://`` likewise; ``memory://``, ``s3://``, ``gs://`` are written in place with
    ``complete`` set last, see `_in_place_output`); ``http(s)://`` is refused.
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
    remote = local_store_path(out) is None
    if remote:
        out = store_location(out)
        if url_scheme(out) in READ_ONLY_SCHEMES:
            raise InputError(out, f"{url_scheme(out)}:// stores are read-only; write to a local path, file://, "
                                  "memory://, s3:// or gs:// (and serve that)")
        target = _in_place_output(out, overwrite=overwrite)
    else:
        out = check_output_path(store_location(out), overwrite=overwrite, inputs=inputs)  # file:// -> path
        target = atomic_output(out, overwrite=overwrite)  # locked; never clobbers a store that appeared meanwhile
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
    with target as tmp:
        group = zarr.open_group(tmp if remote else str(tmp), mode="w", zarr_format=3)
        group.attrs["intstream"] = full
        array = group.create_array(
            "signal",
            shape=shape + (channels,),
            chunks=chunks + (channels,),
            shards=None if shards is None else shards + (channels,),
            dtype=dt,
            compressors=BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if dt.itemsize > 1 else "bitshuffle"),
            fill_value=0,
            # Every chunk is stored, all-zero ones too: an absent chunk then always means damage.
            config={"write_empty_chunks": True},
        )
        writer = StoreWriter(group, array, full, None if source is None else os.fspath(source))
        yield writer
        if writer.samples_written < math.prod(shape):
            raise RuntimeError(f"ingest wrote {writer.samples_written} of {math.prod(shape)} samples")
        writer._finish()


@contextlib.contextmanager
def _in_place_output(url: str, *, overwrite: bool):
    """Yield a writable zarr store at ``url`` on a backend without folder rename.

    Object stores and ``memory://`` cannot rename a folder, so the store is written in
    place: its attributes say ``complete: false`` until the very last write, and
    `open_store` refuses it until then. An existing store is removed first (only with
    ``overwrite``); whatever a failed write left is removed again.
    """
    store = _fsspec_store(url, read_only=False)
    fs, root = store.fs, store.path
    try:
        exists = bool(_sync(fs._exists(root)))
    except Exception as exc:
        raise InputError(url, f"cannot reach the output ({exc.__class__.__name__}: {exc})") from None
    if exists:
        if not overwrite:
            raise InputError(url, "output exists (pass --overwrite to replace it)")
        _sync(fs._rm(root, recursive=True))
    import logging

    logging.getLogger("intstream.store").info(f"{url}: {NO_RENAME_NOTE}")
    try:
        yield store
    except BaseException:
        with contextlib.suppress(Exception):
            _sync(fs._rm(root, recursive=True))
        raise


class SignalStore:
    """A complete signal store opened for reading.

    Attributes
    ----------
    path
        Where the store lives, as a string: an absolute local path or a URL (see
        `store_location`); `open_store` reopens it as such.
    meta
        The ``intstream`` group attributes (see DESIGN §3).
    norm
        The `Normalisation` between stored values and targets (``None`` only for an
        incomplete store opened with ``require_complete=False``).
    """

    def __init__(self, path: str | os.PathLike, group, meta: dict):
        self.path = store_location(path)
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
        """Stored values of a grid block, channel axis last.

        A chunk that is missing or does not decode is an `InputError` naming the store
        and the chunk.
        """
        slices = tuple(slices)
        try:
            return self.array[slices + (slice(None),)]
        except MemoryError:
            raise
        except Exception as exc:
            raise self._read_error(exc, [slices]) from None

    def _read_error(self, exc: Exception, regions: list[tuple[slice, ...]]) -> InputError:
        """The `InputError` for a failed read of ``regions``: find the chunk that fails."""
        if isinstance(exc, MissingChunkError):
            return InputError(self.path, f"chunk {exc.key} is missing (the store is damaged; ingest it again)")
        chunks = self.chunks
        seen = set()
        for region in regions:
            first = tuple(sl.start // c for sl, c in zip(region, chunks))
            last = tuple((sl.stop - 1) // c for sl, c in zip(region, chunks))
            for idx in itertools.product(*(range(a, b + 1) for a, b in zip(first, last))):
                if idx in seen:
                    continue
                seen.add(idx)
                sl = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, chunks, self.shape))
                try:
                    self.array[sl + (slice(None),)]
                except MissingChunkError as inner:
                    return InputError(self.path, f"chunk {inner.key} is missing (the store is damaged; ingest it again)")
                except Exception as inner:
                    block = self.meta.get("shards") or chunks
                    key = "signal/" + self.array.metadata.encode_chunk_key(
                        tuple(sl_.start // b for sl_, b in zip(sl, block)) + (0,))
                    return InputError(self.path, f"chunk {idx} ({key}, samples from {[s.start for s in sl]}) is corrupt: "
                                                 f"{inner.__class__.__name__}: {inner}")
        return InputError(self.path, f"unreadable signal data ({exc.__class__.__name__}: {exc})")

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
        grid_idx = np.unravel_index(flat_index, self.shape)
        idx = tuple(np.repeat(ix, c) for ix in grid_idx)
        try:
            values = self.array.vindex[idx + (np.tile(np.arange(c), len(flat_index)),)]
        except MemoryError:
            raise
        except Exception as exc:
            touched = np.unique(np.stack([ix // ch for ix, ch in zip(grid_idx, self.chunks)], axis=1), axis=0)
            regions = [tuple(slice(int(i) * ch, int(i) * ch + 1) for i, ch in zip(row, self.chunks)) for row in touched]
            raise self._read_error(exc, regions) from None
        return self.norm.targets(values).reshape(-1, c)

    def load_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All ``(coords, targets)`` in memory (in-core training only)."""
        everything = tuple(slice(0, n) for n in self.shape)
        return self.block_samples(everything)

    @property
    def local_path(self) -> Path | None:
        """The store folder when the store is local, else ``None``."""
        return local_store_path(self.path)

    def stored_bytes(self) -> int | None:
        """Bytes the store occupies (compressed), ``None`` where the backend cannot tell."""
        if self.local_path is not None:
            return sum(f.stat().st_size for f in self.local_path.rglob("*") if f.is_file())
        try:
            from fsspec import url_to_fs

            fs, root = url_to_fs(self.path)
            return int(fs.du(root, total=True))
        except Exception:
            return None

    def info(self) -> dict:
        """The metadata plus the store path and sizes, for `intstream info`."""
        return {"store": str(self.path), **self.meta, "n_samples": self.n_samples, "nbytes": self.nbytes}


def open_store(
    path: str | os.PathLike, *, require_complete: bool = True, storage_options: dict | None = None
) -> SignalStore:
    """Open a signal store; a missing, foreign or incomplete store is an `InputError`.

    ``path`` is a local path or a URL fsspec reaches (``file://``, ``http(s)://``
    read-only, ``memory://``, ``s3://``/``gs://`` with s3fs/gcsfs installed);
    ``storage_options`` go to fsspec (credentials, ``anon``...).
    """
    import zarr

    p = store_location(path)
    local = local_store_path(p)
    if local is not None:
        if not local.exists():
            raise InputError(p, "no such store")
        if not (local / "zarr.json").is_file():
            raise InputError(p, "not a Zarr v3 store (no zarr.json)")
        base = zarr.storage.LocalStore(str(local), read_only=True)
    else:
        base = _fsspec_store(p, read_only=True, storage_options=storage_options)
        try:
            found = _sync(base.exists("zarr.json"))
        except Exception as exc:  # connection refused, DNS, TLS, auth...
            raise InputError(p, f"cannot reach the store ({exc.__class__.__name__}: {exc})") from None
        if not found:
            try:  # fsspec's HTTP `exists` says False for an unreachable server too: ask for the reason
                _sync(base.fs._cat_file(f"{base.path.rstrip('/')}/zarr.json"))
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise InputError(p, f"cannot reach the store ({exc.__class__.__name__}: {exc})") from None
            raise InputError(p, "no such store (no zarr.json there)")
    try:
        strict = strict_store(base)
        group = zarr.open_group(strict, mode="r")
        meta = dict(group.attrs.get("intstream") or {})
        # Older stores skipped all-zero chunks (zarr's default): there absent means zeros.
        strict.strict = "stored_chunks" in meta
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
    try:
        array = group["signal"]
    except Exception as exc:
        raise InputError(p, f"unreadable 'signal' array ({exc.__class__.__name__}: {exc})") from None
    _check_attributes(p, meta, array)
    if meta.get("complete") and "stored_chunks" in meta:
        _check_chunks(p, meta, array, group.store)
    if meta.get("shards") and url_scheme(p) in READ_ONLY_SCHEMES:
        _check_http_ranges(p, base)
    return SignalStore(p, group, meta)


def _positive_ints(value, n: int | None = None) -> bool:
    return (isinstance(value, list) and (n is None or len(value) == n) and len(value) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _check_attributes(p, meta: dict, array) -> None:
    """Refuse attributes that are malformed or disagree with the ``signal`` array."""
    bad = lambda what: InputError(p, f"store attributes are damaged: {what}")  # noqa: E731
    if meta.get("kind") not in KINDS:
        raise bad(f"kind {meta.get('kind')!r} is not one of {', '.join(KINDS)}")
    shape, channels = meta.get("shape"), meta.get("channels")
    if not _positive_ints(shape):
        raise bad(f"shape {shape!r} is not a list of positive integers")
    if not (isinstance(channels, int) and not isinstance(channels, bool) and channels > 0):
        raise bad(f"channels {channels!r} is not a positive integer")
    if meta.get("dtype") not in SUPPORTED_DTYPES:
        raise bad(f"dtype {meta.get('dtype')!r} is not one of {', '.join(SUPPORTED_DTYPES)}")
    chunks, shards = meta.get("chunks"), meta.get("shards")
    if not _positive_ints(chunks, len(shape)):
        raise bad(f"chunks {chunks!r} do not fit the {len(shape)}-D shape")
    if shards is not None and not _positive_ints(shards, len(shape)):
        raise bad(f"shards {shards!r} do not fit the {len(shape)}-D shape")
    said = tuple(shape) + (channels,)
    if tuple(array.shape) != said:
        raise InputError(p, f"store attributes disagree with the array: shape {shape} with {channels} channels "
                            f"but the array is {list(array.shape)}")
    if np.dtype(array.dtype).name != meta["dtype"]:
        raise InputError(p, f"store attributes disagree with the array: dtype {meta['dtype']} "
                            f"but the array holds {np.dtype(array.dtype).name}")
    if tuple(array.chunks) != tuple(chunks) + (channels,) or (
        (array.shards is None) != (shards is None)
        or (shards is not None and tuple(array.shards) != tuple(shards) + (channels,))
    ):
        raise InputError(p, f"store attributes disagree with the array: chunks {chunks}, shards {shards} "
                            f"but the array has chunks {list(array.chunks)}, shards {array.shards}")
    norm = meta.get("normalisation")
    if meta.get("complete") or norm:
        try:
            Normalisation.from_dict(norm)
        except Exception:
            raise bad(f"normalisation {norm!r} is malformed") from None


def _check_http_ranges(p: str, base) -> None:
    """Sharded stores are read by byte range: refuse a server that ignores Range requests
    (it would send whole shards where zarr expects a chunk: garbage, not an error)."""
    try:
        head = _sync(base.fs._cat_file(f"{base.path.rstrip('/')}/zarr.json", start=0, end=8))
    except Exception as exc:
        raise InputError(p, f"cannot read the store's metadata by byte range ({exc.__class__.__name__}: {exc})") from None
    if len(head) != 8:
        raise InputError(p, "the server ignores HTTP Range requests, which a sharded store needs; serve it with one "
                            "that supports them (nginx, Apache, S3, `npx http-server`...) or copy the store locally")


def _check_chunks(p, meta: dict, array, store) -> None:
    """Refuse a store missing any chunk it recorded as written (where the backend lists)."""
    expected = _expected_chunk_keys(array, meta)
    if meta["stored_chunks"] != len(expected):
        raise InputError(p, f"store attributes are damaged: stored_chunks {meta['stored_chunks']!r} "
                            f"but the grid has {len(expected)} chunks")
    # HTTP cannot list (fsspec would scrape index pages): the strict store refuses a
    # missing chunk when it is read instead.
    present = None if url_scheme(p) in READ_ONLY_SCHEMES else _listed_chunk_keys(store)
    if present is None:
        return
    missing = [k for k in expected if k not in present]
    if missing:
        raise InputError(p, f"chunk {missing[0]} is missing ({len(missing)} of {len(expected)} chunks absent; "
                            "the store is damaged, ingest it again)")
