"""The one place that maps stored values and grid indices to network inputs/targets.

Targets: ``t = (x - offset) * scale`` in float32, inverted exactly by `Normalisation.inverse`
(rounded and clipped for integer dtypes, so that decode(normalise(x)) == x).
Coordinates: axis ``a`` with ``n`` samples maps index ``i`` to
``extent[a] * (-1 + 2 i / (n - 1))`` -- ``linspace(-extent, extent, n)``.

Targets per kind (DESIGN §3, §4): images by their integer range (or the value range of
float images), audio by its sample range, arrays by their value range, mapped either to
[0, 1] (``unit``, the paper's mapping) or to [-1, 1] (``signed``, the SIREN/EVOS one);
`DEFAULT_TARGETS` holds each kind's default, chosen by ``benchmarks/bench_targets.py``.
SDF distances are kept as they are (already in the normalised box). ``span`` is the
width of the nominal range in target units (1 or 2), so every PSNR can be reported on
the signal's own [0, 1] scale whatever the mapping. Audio input coordinates are spread
like the paper's ``linspace(-5, 5)`` over 2 s at 16 kHz (the same samples per unit for
any length).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "Normalisation",
    "normalisation_for",
    "axis_coords",
    "block_coords",
    "flat_coords",
    "AUDIO_SAMPLES_PER_UNIT",
    "TARGETS",
    "DEFAULT_TARGETS",
]

TARGETS = ("unit", "signed")
# Chosen by benchmarks/bench_targets.py (see BENCHMARKS.md, "Target scaling").
DEFAULT_TARGETS = {"image": "signed", "audio": "signed", "array": "signed"}

# The paper maps 2 s at 16 kHz (32,000 samples) onto linspace(-5, 5): 3,200 samples per unit.
AUDIO_SAMPLES_PER_UNIT = 32000 / 10.0


@dataclass(frozen=True)
class Normalisation:
    """Affine map between stored values and training targets, plus coordinate extents.

    Attributes
    ----------
    offset, scale
        ``target = (value - offset) * scale``.
    dtype
        The stored dtype; the inverse rounds and clips to it when it is an integer type.
    extent
        Per grid axis, coordinates span ``[-extent, extent]``.
    span
        Width of the signal's nominal range in target units: 1 for ``unit`` targets, 2 for
        ``signed`` (PSNRs divide by it to stay on the signal's [0, 1] scale).
    """

    offset: float
    scale: float
    dtype: str
    extent: tuple[float, ...]
    span: float = 1.0

    def targets(self, values: np.ndarray) -> np.ndarray:
        """Stored values (any shape) -> float32 targets of the same shape."""
        t = values.astype(np.float32, copy=True)
        t -= np.float32(self.offset)
        t *= np.float32(self.scale)
        return t

    def inverse(self, targets: np.ndarray) -> np.ndarray:
        """Targets -> values in the stored dtype (exact inverse of `targets`)."""
        x = np.asarray(targets, dtype=np.float64) / self.scale + self.offset
        dt = np.dtype(self.dtype)
        if dt.kind in "ui":
            info = np.iinfo(dt)
            x = np.clip(np.rint(x), info.min, info.max)
        return x.astype(dt)

    def to_unit(self, targets: np.ndarray) -> np.ndarray:
        """Targets -> the signal's nominal range mapped to [0, 1] (for SSIM, which is not
        invariant to an offset): ``t`` for unit targets, ``(t + 1) / 2`` for signed ones."""
        return (targets - (1.0 - self.span)) / self.span

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extent"] = list(self.extent)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(float(d["offset"]), float(d["scale"]), str(d["dtype"]), tuple(float(e) for e in d["extent"]),
                   float(d.get("span", 1.0)))  # stores written before the option: unit targets


def normalisation_for(
    kind: str,
    dtype: str | np.dtype,
    shape: tuple[int, ...],
    value_range: tuple[float, float] | None = None,
    targets: str | None = None,
) -> Normalisation:
    """The normalisation intstream uses for a signal of this kind, dtype and grid shape.

    ``value_range`` (min, max of the data) is needed for float images and for arrays;
    ``targets`` is ``unit`` or ``signed`` (None: the kind's `DEFAULT_TARGETS`).
    """
    dt = np.dtype(dtype)
    extent = tuple(1.0 for _ in shape)
    if kind == "sdf":
        return Normalisation(0.0, 1.0, dt.name, extent)
    targets = targets or DEFAULT_TARGETS[kind]
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {', '.join(TARGETS)} (got {targets!r})")
    if kind == "audio":
        extent = (max(shape[0], 2) / (2 * AUDIO_SAMPLES_PER_UNIT),)
        info = np.iinfo(dt) if dt.kind in "ui" else None
        lo, hi = (float(info.min), float(info.max)) if info else (-1.0, 1.0)  # float audio is nominally [-1, 1]
    elif kind == "image" and dt.kind == "u":
        lo, hi = 0.0, float(np.iinfo(dt).max)
    elif value_range is None:
        raise ValueError(f"{kind} signal of dtype {dt.name} needs its value range")
    else:
        lo, hi = float(value_range[0]), float(value_range[1])
    width = hi - lo if hi > lo else 1.0
    if targets == "unit":
        return Normalisation(lo, 1.0 / width, dt.name, extent)
    return Normalisation(lo + width / 2, 2.0 / width, dt.name, extent, 2.0)


def axis_coords(n: int, extent: float, start: int = 0, stop: int | None = None) -> np.ndarray:
    """``linspace(-extent, extent, n)[start:stop]`` in float32, computed from indices."""
    stop = n if stop is None else stop
    i = np.arange(start, stop, dtype=np.float64)
    c = -1.0 + 2.0 * i / (n - 1) if n > 1 else np.zeros_like(i)
    return (c * extent).astype(np.float32)


def block_coords(shape: tuple[int, ...], extent: tuple[float, ...], slices: tuple[slice, ...]) -> np.ndarray:
    """Coordinates of a rectangular block, row-major, as an ``(n, ndim)`` float32 array."""
    axes = [axis_coords(n, e, s.start, s.stop) for n, e, s in zip(shape, extent, slices)]
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=1)


def flat_coords(shape: tuple[int, ...], extent: tuple[float, ...], flat_index: np.ndarray) -> np.ndarray:
    """Coordinates of samples given by row-major flat indices into the grid, ``(n, ndim)``."""
    idx = np.unravel_index(np.asarray(flat_index, dtype=np.int64), shape)
    out = np.empty((len(idx[0]), len(shape)), dtype=np.float32)
    for a, (n, e) in enumerate(zip(shape, extent)):
        i = idx[a].astype(np.float64)
        out[:, a] = (-1.0 + 2.0 * i / (n - 1)) * e if n > 1 else 0.0
    return out
