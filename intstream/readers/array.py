"""N-D arrays with a trailing channel axis: .npy (memory-mapped) or a Zarr array."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["open_array", "load_array"]

_CASTS = {"float64": "float32", "float16": "float32", "bool": "uint8", "int8": "int16"}
_OK = ("uint8", "uint16", "int16", "int32", "float32")


def load_array(path: Path):
    """A lazily readable array (np.memmap or zarr.Array) from .npy or a Zarr store."""
    try:
        if isinstance(path, Path) and path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        import zarr

        z = zarr.open(str(path), mode="r")  # a folder, or a URL (zarr opens it through fsspec)
        if not hasattr(z, "shape"):  # a group: take an intstream store's signal, or its only array
            names = list(z.array_keys())
            if "signal" in names:
                return z["signal"]
            if len(names) != 1:
                raise InputError(path, f"Zarr group holds {len(names)} arrays; point at one of them")
            return z[names[0]]
        return z
    except InputError:
        raise
    except Exception as exc:
        if isinstance(exc, FileNotFoundError) or "NotFound" in exc.__class__.__name__:
            raise InputError(path, "no Zarr array or group there") from None
        raise InputError(path, f"corrupt or unreadable array ({exc.__class__.__name__}: {exc})") from None


class ArraySource:
    kind = "array"

    def __init__(self, path: Path):
        self.path = path
        self._a = load_array(path)
        if self._a.ndim < 2:
            raise InputError(path, f"array of shape {self._a.shape} has no trailing channel axis (need >= 2-D)")
        dt = np.dtype(self._a.dtype).name
        dt = _CASTS.get(dt, dt)
        if dt not in _OK:
            raise InputError(path, f"unsupported array dtype {self._a.dtype}")
        self.dtype = dt
        self.shape = tuple(int(n) for n in self._a.shape[:-1])
        self.channels = int(self._a.shape[-1])
        self.meta = {}
        if not isinstance(self._a, np.ndarray):  # Zarr: each chunk is decoded whole (.npy is mapped)
            from .image import refuse_big_chunks

            refuse_big_chunks(path, tuple(self._a.chunks)[:-1], "Zarr array")

    def read(self, slices):
        return np.asarray(self._a[tuple(slices) + (slice(None),)]).astype(self.dtype, copy=False)

    def close(self):
        self._a = None


def open_array(path: Path):
    """Open an array source for block reads."""
    return ArraySource(path)
