"""Which network a signal gets and how big (torch-free: the CLI and the planner import it).

``--model auto`` (the default) picks the tiled bank when one SIREN of the default size
(6 x 256) would have fewer than `AUTO_MIN_PARAMS_PER_VALUE` parameters per signal value
(sample x channel), i.e. when one MLP cannot hold the signal (DESIGN §9: a 4096² photo
fitted by one 6 x 256 SIREN ends at 14 dB). ``--capacity R`` sets parameters per value
for either model: the single SIREN's width, or each tile's width given the tile shape
and depth. Defaults per kind come from ``benchmarks/bench_capacity.py``
(``benchmarks/results/capacity.md``).
"""

from __future__ import annotations

import math

__all__ = [
    "MODEL_CHOICES",
    "AUTO_MIN_PARAMS_PER_VALUE",
    "SINGLE_DEFAULTS",
    "TILED_DEFAULTS",
    "siren_params",
    "width_for_params",
    "parse_tile",
    "model_kwargs",
]

MODEL_CHOICES = ("auto", "single", "tiled")
AUTO_MIN_PARAMS_PER_VALUE = 1.0
SINGLE_DEFAULTS = {"width": 256, "depth": 6}  # the paper's SIREN

# Per kind: tile edge (samples per axis), tile SIREN depth, capacity (params per value),
# blending margin (samples each side of a border), Adam lr. See bench_capacity.py; audio's
# capacity 1.0 from bench_audio.py (results/audio.md): SNR 20.2-22.3 dB on every LibriSpeech
# clip within 300 s on 2 CPU cores, where 0.5 ends at 13.9-16.5 dB.
TILED_DEFAULTS = {
    "image": {"tile": 64, "depth": 4, "capacity": 0.2, "overlap": 2.0, "lr": 3e-3},
    "array": {"tile": 64, "depth": 4, "capacity": 0.2, "overlap": 2.0, "lr": 3e-3},
    "audio": {"tile": 2048, "depth": 4, "capacity": 1.0, "overlap": 8.0, "lr": 1e-3},
    "sdf": {"tile": 16, "depth": 4, "capacity": 0.1, "overlap": 1.0, "lr": 1e-3},
}
MIN_TILE_WIDTH = 4

# The paper's audio SIREN: first-layer omega 3000 over 3,200 samples per coordinate unit
# (normalize.AUDIO_SAMPLES_PER_UNIT), i.e. ~0.94 rad per sample; a tile keeps that rate.
_AUDIO_RAD_PER_SAMPLE = 3000.0 / 3200.0


def siren_params(in_dim: int, out_dim: int, width: int, depth: int) -> int:
    """Parameters of one SIREN: ``depth`` linear layers, ``depth - 1`` of them hidden."""
    return (in_dim + 1) * width + (depth - 2) * (width + 1) * width + (width + 1) * out_dim


def width_for_params(params: float, in_dim: int, out_dim: int, depth: int, *, minimum: int = MIN_TILE_WIDTH) -> int:
    """The width whose `siren_params` is nearest ``params`` (at least ``minimum``)."""
    # (depth-2) w^2 + (in + 1 + depth - 2 + out) w + out = params
    a, b, c = depth - 2, in_dim + 1 + (depth - 2) + out_dim, out_dim - params
    w = -c / b if a == 0 else (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
    best = max(minimum, int(w))
    cands = [best, best + 1]
    return min(cands, key=lambda v: abs(siren_params(in_dim, out_dim, v, depth) - params))


def parse_tile(value, ndim: int | None = None) -> tuple[int, ...] | None:
    """``"64x64"``, ``"64"``, ``64`` or ``[64, 64]`` -> a tuple (one int applies to every axis)."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        try:
            out = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"tile {value!r} is not like 64x64 or 64") from None
    elif isinstance(value, int):
        out = (value,)
    else:
        out = tuple(int(v) for v in value)
    if not out or min(out) < 1:
        raise ValueError(f"tile {value!r}: every edge must be >= 1")
    if ndim is not None:
        if len(out) == 1:
            out = out * ndim
        elif len(out) != ndim:
            raise ValueError(f"tile {value!r} has {len(out)} axes; the signal has {ndim}")
    return out


def model_kwargs(
    kind: str,
    shape: tuple[int, ...],
    channels: int,
    extent: tuple[float, ...],
    *,
    model: str = "auto",
    capacity: float | None = None,
    tile=None,
    overlap: float | None = None,
    arch: str = "siren",
    width: int | None = None,
    depth: int | None = None,
    omega0: float = 30.0,
    first_omega0: float | None = None,
) -> dict:
    """`ModelConfig` keyword arguments for a signal and the fit options.

    ``auto`` resolves to ``single`` when the architecture is not a SIREN, when ``width``
    is given (an explicit MLP size), or when the default single SIREN has at least
    `AUTO_MIN_PARAMS_PER_VALUE` parameters per value; otherwise ``tiled``.
    Raises ValueError for inconsistent options (the CLI makes it exit 2).
    """
    if model not in MODEL_CHOICES:
        raise ValueError(f"unknown model {model!r} (expected one of {', '.join(MODEL_CHOICES)})")
    ndim = len(shape)
    values = math.prod(shape) * channels
    if capacity is not None and width is not None:
        raise ValueError("give --capacity or --width, not both (capacity sets the width)")
    if model == "auto":
        default_params = siren_params(ndim, channels, SINGLE_DEFAULTS["width"], SINGLE_DEFAULTS["depth"])
        small = default_params / values < AUTO_MIN_PARAMS_PER_VALUE
        model = "tiled" if (arch == "siren" and width is None and small) else "single"
    common = {"in_dim": ndim, "out_dim": channels, "arch": arch, "omega0": omega0, "first_omega0": first_omega0}
    if model == "single":
        if tile is not None or overlap is not None:
            raise ValueError("--tile and --overlap apply to --model tiled only")
        depth = depth or SINGLE_DEFAULTS["depth"]
        if width is None:
            width = (SINGLE_DEFAULTS["width"] if capacity is None
                     else width_for_params(capacity * values, ndim, channels, depth, minimum=1))
        return {**common, "model": "single", "width": int(width), "depth": int(depth)}
    if arch != "siren":
        raise ValueError(f"--model tiled is a bank of SIRENs; --arch {arch} is not supported with it")
    d = TILED_DEFAULTS[kind]
    tile = parse_tile(tile if tile is not None else d["tile"], ndim)
    tile = tuple(min(t, n) for t, n in zip(tile, shape))
    overlap = d["overlap"] if overlap is None else float(overlap)
    depth = depth or d["depth"]
    counts = [math.ceil(n / t) for n, t in zip(shape, tile)]
    per_tile_samples = math.prod(n / k for n, k in zip(shape, counts))
    if width is None:
        r = d["capacity"] if capacity is None else capacity
        width = width_for_params(r * per_tile_samples * channels, ndim, channels, depth)
    if first_omega0 is None and kind == "audio":
        # Local coordinates span 2 units over the tile and its two margins.
        span = shape[0] / counts[0] + 2 * (overlap if counts[0] > 1 else 0.0)
        common["first_omega0"] = round(_AUDIO_RAD_PER_SAMPLE * span / 2.0, 3)
    return {**common, "model": "tiled", "width": int(width), "depth": int(depth), "grid": tuple(shape),
            "extent": tuple(float(e) for e in extent), "tile": tile, "overlap": overlap}
