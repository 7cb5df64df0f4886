"""Rate control: a target file size -> the model size for `fit` and the bit width for `export-weights`.

A target is given as ``--bpp`` (images: bits per pixel), ``--kbps`` (audio) or
``--bits-per-sample`` (any kind); all become bits per grid sample of the weights file.

- ``fit`` sizes the network (``--capacity``, i.e. the width of the single SIREN or of
  each tile) so that its weights, exported at `PLAN_DTYPE` and entropy coded, come to
  the target: `plan_capacity` searches the capacity whose estimated file size
  (`estimate_bytes`: the exact tensor shapes, built on torch's ``meta`` device, times
  the measured coded bits per weight, plus the headers) is the largest within it. The
  target is recorded in the run directory (``rate.json``).
- ``export-weights`` (with ``--bpp`` etc. or the recorded target) encodes the weights
  at ``int8``, ``int7``, ... and keeps the widest whose real file fits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .errors import InputError

__all__ = ["PLAN_DTYPE", "RATE_FILE", "target_bits", "estimate_bytes", "plan_capacity", "plan_for_fit", "write_target", "read_target"]

PLAN_DTYPE = "int8"
RATE_FILE = "rate.json"
# Coded bits per weight / nominal bits, measured with the ans coder on fitted SIRENs
# (benchmarks/results/rd.md): their weights are close to uniform within a row, so the
# coder gains little over the nominal width (small tensors: nothing at int8).
CODED_FRACTION = {8: 1.0, 7: 0.99, 6: 0.98, 5: 0.97, 4: 0.95, 3: 0.93}
# Bytes besides the tensors: safetensors framing and plain metadata (~300), the packed
# header's fixed part, half the store metadata's JSON, and per tensor its layout entry
# (measured, zlib level 9).
HEADER_BYTES = 600
HEADER_BYTES_PER_TENSOR = 25


def target_bits(meta: dict, *, bpp: float | None = None, kbps: float | None = None,
                bits_per_sample: float | None = None) -> float | None:
    """Bits per grid sample for the one rate option given (None when none is)."""
    given = [(n, v) for n, v in (("--bpp", bpp), ("--kbps", kbps), ("--bits-per-sample", bits_per_sample))
             if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise InputError(None, f"give one rate target, not {' and '.join(n for n, _ in given)}")
    name, value = given[0]
    if not (math.isfinite(value) and value > 0):
        raise InputError(None, f"{name}: {value} is not a positive number")
    kind = meta.get("kind")
    if name == "--bpp":
        if kind != "image":
            raise InputError(None, f"--bpp is for images; this store holds {kind} (use --bits-per-sample)")
        return float(value)
    if name == "--kbps":
        rate = meta.get("sample_rate")
        if kind != "audio" or not rate:
            raise InputError(None, f"--kbps is for audio; this store holds {kind} (use --bits-per-sample)")
        return float(value) * 1000.0 / float(rate)
    return float(value)


def estimate_bytes(model_cfg, meta: dict, dtype: str = PLAN_DTYPE) -> int:
    """Estimated weights-file bytes of a network of ``model_cfg`` exported at ``dtype``."""
    import torch

    from .export import INT_DTYPES, _keep_fp32, _n_groups, is_quantised
    from .models import build_model

    with torch.device("meta"):
        net = build_model(model_cfg)
    keep = _keep_fp32(net, model_cfg)
    bits = INT_DTYPES.get(dtype)
    total, n = HEADER_BYTES + len(json.dumps(meta)) // 2, 0
    for name, t in net.state_dict().items():
        shape = tuple(t.shape)
        n += 1
        if name in keep or dtype == "float32":
            total += 4 * t.numel()
        elif bits is not None and is_quantised(name, shape, keep):
            total += t.numel() * bits * CODED_FRACTION[bits] / 8 + 2 * _n_groups(shape)
        else:
            total += 2 * t.numel()
    return int(total + HEADER_BYTES_PER_TENSOR * n)


def plan_capacity(meta: dict, target: float, *, dtype: str = PLAN_DTYPE, **model_opts) -> tuple[float, int, dict]:
    """The largest capacity whose network's file at ``dtype`` fits ``target`` bits per sample.

    ``model_opts`` are `intstream.models.sizing.model_kwargs`'s options (model, tile,
    overlap, arch, depth, omega0, first_omega0), as fit will pass them.

    Returns ``(capacity, estimated_bytes, model_kwargs)``; InputError when even the
    smallest network (width 1 per tile) does not fit.
    """
    from .models import ModelConfig
    from .models.sizing import model_kwargs
    from .normalize import Normalisation

    shape = tuple(int(n) for n in meta["shape"])
    channels = int(meta["channels"])
    extent = Normalisation.from_dict(meta["normalisation"]).extent
    budget = target * math.prod(shape) / 8

    def size(capacity: float):
        kw = model_kwargs(meta["kind"], shape, channels, extent, capacity=capacity, **model_opts)
        return estimate_bytes(ModelConfig(**kw), meta, dtype), kw

    lo, hi = 1e-6, 1.0
    if size(lo)[0] > budget:
        raise InputError(None, f"a rate of {target:g} bits per sample ({budget:.0f} bytes) is below the smallest "
                               f"network's {size(lo)[0]} bytes")
    while size(hi)[0] <= budget and hi < 1e6:
        lo, hi = hi, hi * 2
    for _ in range(40):  # bisect on a log scale; the width is a step function of capacity
        mid = math.sqrt(lo * hi)
        if size(mid)[0] <= budget:
            lo = mid
        else:
            hi = mid
    est, kw = size(lo)
    return lo, est, kw


def plan_for_fit(store_path, rate: dict, opts: dict) -> dict:
    """``fit --bpp/--kbps/--bits-per-sample``: the capacity to train at and what it should weigh.

    ``rate`` holds the three options (one set); ``opts`` the fit's model options.
    """
    from .store import open_store

    meta = open_store(store_path).meta
    target = target_bits(meta, **rate)
    for key in ("capacity", "width"):
        if opts.get(key) is not None:
            raise InputError(None, f"a rate target sizes the model: drop --{key}")
    model_opts = {k: opts.get(k) for k in ("model", "tile", "overlap", "depth", "first_omega0")}
    model_opts["model"] = model_opts["model"] or "auto"
    model_opts["arch"] = opts.get("arch") or "siren"
    model_opts["omega0"] = opts.get("omega0") or 30.0
    try:
        capacity, est, kw = plan_capacity(meta, target, **model_opts)
    except ValueError as exc:
        raise InputError(None, str(exc)) from None
    return {"bits_per_sample": target, "target_bytes": round(target * math.prod(meta["shape"]) / 8),
            "dtype": PLAN_DTYPE, "capacity": capacity, "estimated_bytes": est, "model": kw["model"],
            "width": kw["width"], "depth": kw["depth"]}


def write_target(run_dir: str | os.PathLike, bits: float, *, planned: dict | None = None) -> None:
    """Record the rate target in the run directory (export-weights reads it)."""
    from .atomic import atomic_output

    path = Path(run_dir) / RATE_FILE
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps({"bits_per_sample": bits, **(planned or {})}))


def read_target(run_dir: str | os.PathLike) -> float | None:
    """The run's recorded target in bits per sample, or None."""
    path = Path(run_dir) / RATE_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())["bits_per_sample"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError
        return float(value)
    except (ValueError, KeyError, TypeError, OSError):
        raise InputError(path, "corrupt rate target (expected {\"bits_per_sample\": positive number})") from None
