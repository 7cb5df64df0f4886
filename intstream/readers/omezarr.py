"""OME-Zarr (OME-NGFF) images: the multiscales and axes metadata decide what is what.

An OME-Zarr image is a Zarr group whose attributes hold ``multiscales`` (NGFF 0.4, Zarr
v2) or ``ome.multiscales`` (NGFF 0.5, Zarr v3): a list of datasets, one array per
resolution level (level 0 is the full one), and the named, typed axes they share, such
as ``c, y, x`` or ``t, c, z, y, x``. The reader maps the ``channel`` axis to the store's
channel axis (last), keeps the ``space`` axes in their order as the grid (``y, x`` is an
image, ``z, y, x`` an array volume), takes the single time point of a ``time`` axis and
refuses what it cannot map (a time series, two channel axes) instead of guessing.
Reads stream: each block reads only the chunks it covers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["multiscales", "open_ome_zarr", "OmeZarrImage"]

_CASTS = {"float64": "float32", "float16": "float32", "bool": "uint8", "int8": "int16"}
_OK = ("uint8", "uint16", "int16", "int32", "float32")
_IMAGE_DTYPES = ("uint8", "uint16", "float32")


def _group(path: Path):
    import zarr

    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception:
        return None
    return g


def multiscales(path: Path) -> dict | None:
    """The first NGFF ``multiscales`` entry of the Zarr group at ``path``, or ``None``."""
    g = _group(path)
    if g is None:
        return None
    try:
        attrs = dict(g.attrs)
    except Exception:
        return None
    ome = attrs.get("ome")
    ms = ome.get("multiscales") if isinstance(ome, dict) else None
    if ms is None:
        ms = attrs.get("multiscales")
    if isinstance(ms, list) and ms and isinstance(ms[0], dict):
        return ms[0]
    return None


def _axes(path: Path, ms: dict, ndim: int) -> list[tuple[str, str]]:
    """``[(name, type), ...]`` of the multiscales axes; NGFF 0.3's plain names get types."""
    raw = ms.get("axes")
    if raw is None:  # NGFF <= 0.2: always 5-D t, c, z, y, x
        raw = ["t", "c", "z", "y", "x"]
    default_type = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    axes = []
    for a in raw:
        if isinstance(a, str):
            axes.append((a, default_type.get(a.lower(), "")))
        elif isinstance(a, dict) and isinstance(a.get("name"), str):
            axes.append((a["name"], str(a.get("type") or default_type.get(a["name"].lower(), ""))))
        else:
            raise InputError(path, f"OME-Zarr axes entry {a!r} has no name")
    if len(axes) != ndim:
        raise InputError(path, f"OME-Zarr metadata lists {len(axes)} axes ({', '.join(n for n, _ in axes)}) "
                               f"but the level array has {ndim} dimensions")
    return axes


class OmeZarrImage:
    """One resolution level of an OME-Zarr image, read block by block.

    Attributes follow the reader interface (`intstream.readers`): ``kind`` is ``image``
    for two space axes (and an image dtype), else ``array``.
    """

    def __init__(self, path: Path, level: int = 0):
        ms = multiscales(path)
        if ms is None:
            raise InputError(path, "not an OME-Zarr image (no multiscales metadata)")
        datasets = ms.get("datasets")
        if not isinstance(datasets, list) or not datasets:
            raise InputError(path, "OME-Zarr multiscales lists no datasets")
        if not 0 <= level < len(datasets):
            have = "one level (0)" if len(datasets) == 1 else f"{len(datasets)} levels (0..{len(datasets) - 1})"
            raise InputError(path, f"--level {level}: the OME-Zarr image has {have}")
        ds = datasets[level]
        g = _group(path)
        try:
            self._a = g[str(ds["path"])]
        except Exception as exc:
            raise InputError(path, f"OME-Zarr level {level} ({ds.get('path')!r}) is unreadable "
                                   f"({exc.__class__.__name__}: {exc})") from None
        shape = tuple(int(n) for n in self._a.shape)
        axes = _axes(path, ms, len(shape))
        self.path = path
        self._index = []  # per source axis: ("grid", i) | ("channel",) | ("fixed", 0)
        grid_axes, channel_axis = [], None
        for i, ((name, typ), n) in enumerate(zip(axes, shape)):
            if typ == "space":
                self._index.append(("grid", len(grid_axes)))
                grid_axes.append(name)
            elif typ == "channel":
                if channel_axis is not None:
                    raise InputError(path, f"OME-Zarr image has two channel axes ({axes[channel_axis][0]}, {name})")
                channel_axis = i
                self._index.append(("channel",))
            elif n == 1:  # a single time point, or another singleton axis
                self._index.append(("fixed", 0))
            elif typ == "time":
                raise InputError(path, f"OME-Zarr image is a time series ({n} time points on axis {name!r}); "
                                       "ingest one time point (e.g. slice it into its own image)")
            else:
                raise InputError(path, f"OME-Zarr axis {name!r} (type {typ or 'unknown'!r}, size {n}) is neither "
                                       "space nor channel")
        if not grid_axes:
            raise InputError(path, "OME-Zarr image has no space axes")
        self.shape = tuple(shape[i] for i, ix in enumerate(self._index) if ix[0] == "grid")
        self.channels = 1 if channel_axis is None else shape[channel_axis]
        self._channel_axis = channel_axis
        dt = np.dtype(self._a.dtype).name
        dt = _CASTS.get(dt, dt)
        if dt not in _OK:
            raise InputError(path, f"unsupported OME-Zarr dtype {self._a.dtype}")
        self.dtype = dt
        self.kind = "image" if len(grid_axes) == 2 and dt in _IMAGE_DTYPES else "array"
        scale = None
        for t in ds.get("coordinateTransformations") or []:
            if isinstance(t, dict) and t.get("type") == "scale":
                scale = t.get("scale")
        self.meta = {"source_image": {"format": "ome-zarr", "level": int(level), "levels": len(datasets),
                                      "axes": [n for n, _ in axes], "grid_axes": grid_axes, "scale": scale}}

    def read(self, slices):
        index = []
        for ix in self._index:
            if ix[0] == "grid":
                index.append(slices[ix[1]])
            elif ix[0] == "channel":
                index.append(slice(None))
            else:
                index.append(0)
        try:
            block = np.asarray(self._a[tuple(index)])
        except Exception as exc:
            starts = [s.start for s in slices]
            raise InputError(self.path, f"corrupt OME-Zarr chunk near {starts} ({exc.__class__.__name__}: {exc})") from None
        # Remaining axes are the grid axes and (maybe) the channel axis, in source order.
        kept = [ix for ix in self._index if ix[0] != "fixed"]
        if self._channel_axis is None:
            block = block[..., None]
        else:
            block = np.moveaxis(block, [k for k, ix in enumerate(kept) if ix[0] == "channel"][0], -1)
        return block.astype(self.dtype, copy=False)

    def close(self):
        self._a = None


def open_ome_zarr(path: Path, level: int = 0) -> OmeZarrImage:
    """Open level ``level`` of the OME-Zarr image at ``path`` for block reads."""
    return OmeZarrImage(path, level)
