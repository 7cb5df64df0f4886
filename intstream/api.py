"""The Python API beside the CLI: the same stages, as functions with keyword-only options.

``ingest``, ``evaluate`` and ``export_weights`` are the library functions themselves
(re-exported by `intstream`); this module adds `fit` (options as keywords instead of a
`FitConfig`), `decode` (to a file, or to an array for a region at any resolution) and
`load_weights` (any of a weights file, a run directory or a checkpoint). Nothing here
imports torch until a function runs, so ``import intstream`` stays light.

In a notebook, progress is tqdm's notebook bar; in a terminal, a bar; elsewhere, lines
on the ``intstream.progress`` logger (configure logging to see them). ``progress=False``
silences it.
"""

from __future__ import annotations

import inspect
import json
import os
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np

from .errors import InputError
from .fit import FitConfig

__all__ = ["fit", "decode", "load_weights"]


def _fit_config(config, options: dict) -> FitConfig:
    if config is None:
        base = {}
    elif isinstance(config, FitConfig):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = dict(config)
    else:  # a TOML file ([fit] table or top-level keys) or a run's config.json
        p = Path(config)
        data = json.loads(p.read_text()) if p.suffix == ".json" else tomllib.loads(p.read_text())
        base = data.get("fit", data) if isinstance(data.get("fit"), dict) else data
        base = {k.replace("-", "_"): v for k, v in base.items() if not isinstance(v, dict)}
    merged = {**base, **options}
    known = {f.name for f in fields(FitConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise TypeError(f"fit() got unknown option(s) {', '.join(unknown)} (FitConfig fields: {', '.join(sorted(known))})")
    return FitConfig(**merged)


def fit(store, run_dir=None, *, config=None, resume: bool = False, overwrite: bool = False,
        progress: bool | None = None, **options) -> dict:
    """Train an implicit neural representation of a signal store.

    Parameters
    ----------
    store : str or os.PathLike
        The signal store (from `ingest`).
    run_dir : str or os.PathLike, optional
        Where checkpoints, ``log.jsonl`` and ``config.json`` go (default:
        ``<store name>.run`` in the current folder).
    config : FitConfig, dict or path, optional
        Base options: a `FitConfig`, a dict of its fields, a TOML file (top-level keys
        or a ``[fit]`` table) or a run's ``config.json``. Keyword options override it.
    resume : bool
        Continue from the run directory's checkpoint (fresh start if there is none).
    overwrite : bool
        Replace a run directory that already holds a checkpoint.
    progress : bool, optional
        ``None``: a bar in a terminal or notebook, log lines otherwise; ``False``: none.
    **options
        Any `intstream.fit.FitConfig` field, keyword only (``steps``, ``strategy``,
        ``width``, ``time_budget``, ...); ``None`` takes the kind's or strategy's preset.
        The signature lists them all.

    Returns
    -------
    dict
        The fit manifest: ``run_dir``, ``checkpoint``, ``steps``, ``train_seconds``,
        ``train_psnr`` (dB, of the final weights), ``stopped``, ...

    Examples
    --------
    >>> run = intstream.fit("kodim05.zarr", "kodim05.run", steps=2000, width=64)  # doctest: +SKIP
    """
    from .fit import fit as _fit

    cfg = _fit_config(config, options)
    store_path = os.fspath(store)
    if run_dir is None:
        run_dir = Path.cwd() / (Path(store_path).name.removesuffix(".zarr") + ".run")
    return _fit(store_path, run_dir, cfg, resume=resume, overwrite=overwrite, progress=progress)


def _fit_signature() -> inspect.Signature:
    """``fit``'s signature with every `FitConfig` field as a keyword-only parameter."""
    base = inspect.signature(fit)
    params = [p for p in base.parameters.values() if p.kind != p.VAR_KEYWORD]
    for f in fields(FitConfig):
        default = f.default if f.default is not MISSING else f.default_factory()
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=f.type))
    return base.replace(parameters=params)


fit.__signature__ = _fit_signature()


def load_weights(path):
    """Load fitted weights from a weights file, a run directory or a checkpoint.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file from `export_weights`, a run directory or its
        ``checkpoint.pt``.

    Returns
    -------
    intstream.export.Weights
        The network's configuration and float32 state, the signal's metadata (kind,
        shape, normalisation), the training summary; ``.model()`` builds the network.

    Raises
    ------
    InputError
        For a missing, truncated, corrupted or foreign file.
    """
    from .export import load_source

    return load_source(path)


def _region(region, shape: tuple[int, ...]) -> tuple[slice, ...]:
    if region is None:
        region = ()
    if isinstance(region, slice):
        region = (region,)
    if len(region) > len(shape):
        raise InputError(None, f"region has {len(region)} axes; the signal has {len(shape)}")
    out = []
    for axis, n in enumerate(shape):
        r = region[axis] if axis < len(region) else slice(None)
        if not isinstance(r, slice):
            r = slice(*r)
        start, stop, step = r.indices(n)
        if step != 1 or stop <= start:
            raise InputError(None, f"region axis {axis}: {r} is empty or strided (decode at another shape instead)")
        out.append(slice(start, stop))
    return tuple(out)


def _dims(kind: str, ndim: int) -> list[str]:
    if kind == "image" and ndim == 2:
        return ["y", "x"]
    if kind == "audio":
        return ["time"]
    if kind == "sdf":
        return ["z", "y", "x"]
    return [f"dim_{i}" for i in range(ndim)]


def decode(weights, output=None, *, shape=None, region=None, device: str = "auto", batch: int = 65536,
           overwrite: bool = False, xarray: bool | None = None):
    """Decode fitted weights to a file, or to an array for a region at any resolution.

    Parameters
    ----------
    weights : path or Weights
        A weights file, a run directory, a checkpoint, or what `load_weights` returned.
    output : str or os.PathLike, optional
        Write a file (``.png .tif .wav .flac .ply .obj .zarr``) and return its manifest.
        Without it, return the decoded values.
    shape : tuple of int, optional
        The grid to decode on (default: the fitted signal's); any shape samples the same
        continuous function, so ``(2 * h, 2 * w)`` upsamples an image.
    region : tuple of slice, optional
        Per axis, the part of that grid to decode (``(slice(0, 256), slice(0, 256))``);
        axes left out are whole. Only without ``output``.
    device, batch
        Where the network runs and samples per forward pass.
    overwrite : bool
        Replace an existing ``output``.
    xarray : bool, optional
        Return an `xarray.DataArray` with coordinates (``None``: when xarray is
        installed). Coordinates are in the source's units: pixels for images and arrays
        (fractional when ``shape`` differs), seconds for audio, the network's normalised
        box for SDFs.

    Returns
    -------
    numpy.ndarray or xarray.DataArray or dict
        Values in the source's scale and dtype (``uint8`` for an 8-bit image), shaped
        region + ``(channels,)``; the manifest dict when ``output`` is given.
    """
    from .decode import decode as _decode, predict_blocks, resolve_device
    from .export import Weights
    from .normalize import axis_coords

    w = weights if isinstance(weights, Weights) else load_weights(weights)
    grid = tuple(int(n) for n in shape) if shape is not None else w.shape
    if len(grid) != len(w.shape) or any(n < 1 for n in grid):
        raise InputError(None, f"shape {grid} does not fit a {len(w.shape)}-axis signal")
    if output is not None:
        if region is not None:
            raise InputError(None, "region is for decoding to an array; pass output=None")
        return _decode(w, output, shape=grid, device=device, batch=batch, overwrite=overwrite)
    reg = _region(region, grid)
    model = w.model(resolve_device(device))
    sub = tuple(s.stop - s.start for s in reg)
    out = np.empty(sub + (w.channels,), dtype=np.dtype(w.norm.dtype))
    # Slabs along the first axis of about a million samples: bounded memory at any size.
    row = int(np.prod(sub[1:], dtype=np.int64)) or 1
    rows = max(1, (1 << 20) // row)
    blocks = [(slice(a, min(a + rows, reg[0].stop)),) + reg[1:] for a in range(reg[0].start, reg[0].stop, rows)]
    for slices, pred in predict_blocks(model, grid, w.norm.extent, blocks, batch=batch):
        out[slices[0].start - reg[0].start: slices[0].stop - reg[0].start] = w.norm.inverse(pred)
    if xarray is False:
        return out
    try:
        import xarray as xr
    except ImportError:
        if xarray:
            raise ImportError("decode(xarray=True) needs xarray: pip install xarray") from None
        return out
    dims = _dims(w.kind, len(grid))
    coords = {}
    for axis, (dim, s) in enumerate(zip(dims, reg)):
        n_src, n = w.shape[axis], grid[axis]
        idx = np.arange(s.start, s.stop, dtype=np.float64)
        if w.kind == "sdf":
            coords[dim] = axis_coords(n, w.norm.extent[axis])[s]
        else:
            pos = idx * ((n_src - 1) / (n - 1)) if n > 1 else idx
            coords[dim] = pos / float(w.signal.get("sample_rate") or 1.0) if w.kind == "audio" else pos
    coords["channel"] = np.arange(w.channels)
    units = {"audio": "s", "sdf": "normalised box"}.get(w.kind, "source pixels")
    return xr.DataArray(out, dims=dims + ["channel"], coords=coords, name=w.signal.get("source", {}).get("name"),
                        attrs={"kind": w.kind, "coordinate_units": units, "source_shape": list(w.shape)})
