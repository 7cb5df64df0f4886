"""The one place that maps stored values and grid indices to network inputs/targets.

Targets: ``t = (x - offset) * scale`` in float32, inverted exactly by `Normalisation.inverse`
(rounded and clipped for integer dtypes, so that decode(normalise(x)) == x).
Coordinates: axis ``a`` with ``n`` samples maps index ``i`` to
``extent[a] * (-1 + 2 i / (n - 1))`` -- ``linspace(-extent, extent, n)``.

Per kind (DESIGN §3 and §4): images to [0, 1] by the integer range (or the value range of
float images); audio to [0, 1] with input coordinates spread like the paper's
``linspace(-5, 5)`` over 2 s at 16 kHz (the same samples per unit for any length);
SDF distances unchanged (they are already in the normalised box); arrays to [0, 1] by
their value range.
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
]

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
    """

    offset: float
    scale: float
    dtype: str
    extent: tuple[float, ...]

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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["extent"] = list(self.extent)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(float(d["offset"]), float(d["scale"]), str(d["dtype"]), tuple(float(e) for e in d["extent"]))


def normalisation_for(
    kind: str,
    dtype: str | np.dtype,
    shape: tuple[int, ...],
    value_range: tuple[float, float] | None = None,
) -> Normalisation:
    """The normalisation intstream uses for a signal of this kind, dtype and grid shape.

    ``value_range`` (min, max of the data) is needed for float images and for arrays.
    """
    dt = np.dtype(dtype)
    extent = tuple(1.0 for _ in shape)
    if kind == "sdf":
        return Normalisation(0.0, 1.0, dt.name, extent)
    if kind == "audio":
        extent = (max(shape[0], 2) / (2 * AUDIO_SAMPLES_PER_UNIT),)
        if dt.kind in "ui":
            info = np.iinfo(dt)
            return Normalisation(float(info.min), 1.0 / (float(info.max) - float(info.min)), dt.name, extent)
        return Normalisation(-1.0, 0.5, dt.name, extent)  # float audio is nominally [-1, 1]
    if kind == "image" and dt.kind == "u":
        return Normalisation(0.0, 1.0 / float(np.iinfo(dt).max), dt.name, extent)
    if value_range is None:
        raise ValueError(f"{kind} signal of dtype {dt.name} needs its value range")
    lo, hi = float(value_range[0]), float(value_range[1])
    return Normalisation(lo, 1.0 / (hi - lo) if hi > lo else 1.0, dt.name, extent)


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
