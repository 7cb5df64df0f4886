"""Images: PNG/JPEG/WebP/BMP through Pillow, TIFF/BigTIFF tile by tile through tifffile."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["open_image"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


class PillowImage:
    """A Pillow-decodable image (decoded whole: these formats cannot be read by region)."""

    kind = "image"

    def __init__(self, path: Path):
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # we ingest huge images on purpose
        try:
            with Image.open(path) as im:
                im.load()
                self.values = _pil_to_array(im, path)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(path, f"corrupt or unreadable image ({exc})") from None
        if self.values.ndim == 2:
            self.values = self.values[..., None]
        self.shape = self.values.shape[:2]
        self.channels = self.values.shape[2]
        self.dtype = self.values.dtype.name
        self.meta = {}

    def read(self, slices):
        return self.values[slices]

    def close(self):
        self.values = None


def _pil_to_array(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGBA" if ("A" in mode or "transparency" in im.info) else ("L" if mode == "1" else "RGB"))
        mode = im.mode
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":  # 32-bit int container, typically 16-bit data
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(path, "32-bit integer image values outside 0..65535 are not supported")
        return a.astype(np.uint16)
    if mode == "F":
        return np.asarray(im, dtype=np.float32)
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im, dtype=np.uint8)
    raise InputError(path, f"unsupported image mode {mode}")


class TiffImage:
    """A TIFF/BigTIFF read region by region through tifffile's Zarr interface (never whole)."""

    kind = "image"

    def __init__(self, path: Path):
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            axes = series.axes
            self._zstore = self._tif.aszarr(series=0, level=0)
            z = zarr.open(self._zstore, mode="r")
            if not hasattr(z, "shape"):  # a pyramid opens as a group
                z = z["0"]
            self._z = z
        except InputError:
            raise
        except Exception as exc:
            raise InputError(path, f"corrupt or unreadable TIFF ({exc})") from None
        shape = tuple(series.shape)
        # Interpret the axes: YX (gray), YXS (interleaved samples), SYX/CYX (planar).
        if axes == "YX":
            self._order = "yx"
            self.shape, self.channels = shape, 1
        elif axes == "YXS":
            self._order = "yxs"
            self.shape, self.channels = shape[:2], shape[2]
        elif axes in ("SYX", "CYX"):
            self._order = "syx"
            self.shape, self.channels = shape[1:], shape[0]
        else:
            raise InputError(path, f"TIFF axes {axes} {shape} are not a 2-D image (use --kind sdf for stacks)")
        dt = np.dtype(series.dtype)
        if dt.name not in ("uint8", "uint16", "float32"):
            raise InputError(path, f"unsupported TIFF sample type {dt.name}")
        self.dtype = dt.name
        self.path = path
        self.meta = {}

    def read(self, slices):
        if self._order == "yx":
            return np.asarray(self._z[slices])[..., None]
        if self._order == "yxs":
            return np.asarray(self._z[slices + (slice(None),)])
        return np.moveaxis(np.asarray(self._z[(slice(None),) + slices]), 0, -1)

    def close(self):
        self._zstore.close()
        self._tif.close()


def open_image(path: Path):
    """Open an image for block reads (TIFF streams; other formats decode once)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        return TiffImage(path)
    return PillowImage(path)
