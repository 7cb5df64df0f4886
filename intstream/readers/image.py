"""Images: PNG/JPEG/WebP/BMP through Pillow, TIFF/BigTIFF tile by tile through tifffile."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["open_image"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi")  # whole-slide scans are TIFFs too
# PNG/JPEG/WebP/BMP are decoded whole: refuse more pixels than this (a 16384 x 16384
# image; 768 MiB as 8-bit RGB) unless raised, so a decompression bomb (a tiny file that
# declares a huge image) is never decoded. TIFFs and Zarr arrays stream, but each strip,
# tile or chunk is decoded whole, so the same limit applies to those pieces.
MAX_PIXELS = 1 << 28
MAX_PIXELS_ENV = "INTSTREAM_MAX_PIXELS"


_limit: int | None = None


@contextlib.contextmanager
def pixel_limit(pixels: int | None):
    """Within the block, decode images up to ``pixels`` (``None``: the default); ``ingest --max-pixels``."""
    global _limit
    old, _limit = _limit, (None if pixels is None else int(pixels))
    try:
        yield
    finally:
        _limit = old


def max_pixels() -> int:
    """The decode limit in pixels: `pixel_limit`'s, else ``$INTSTREAM_MAX_PIXELS``, else `MAX_PIXELS`."""
    if _limit is not None:
        return _limit
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    try:
        value = int(float(text))
    except (ValueError, OverflowError):
        raise InputError(None, f"{MAX_PIXELS_ENV}={text!r} is not a pixel count") from None
    if value < 1:
        raise InputError(None, f"{MAX_PIXELS_ENV}={text!r} must be a positive pixel count")
    return value


def refuse_big_chunks(path, chunk: tuple[int, ...], what: str = "array") -> None:
    """Refuse a source whose smallest readable piece (grid samples) exceeds `max_pixels`.

    Zarr chunks and TIFF strips are decoded whole: a tiny file holding one huge,
    well-compressed chunk is a decompression bomb even for a streaming reader.
    """
    import math

    n, limit = math.prod(int(c) for c in chunk), max_pixels()
    if n > limit:
        shape = "x".join(str(int(c)) for c in chunk)
        raise InputError(path, f"{what} is stored in chunks of {shape} samples ({n / 1e6:.0f} M), each decoded whole, "
                               f"above the decode limit of {limit / 1e6:.0f} M; if you trust it, raise the limit with "
                               f"--max-pixels {n} (or {MAX_PIXELS_ENV}), or re-chunk it smaller")


class PillowImage:
    """A Pillow-decodable image (decoded whole: these formats cannot be read by region)."""

    kind = "image"

    def __init__(self, path: Path):
        from PIL import Image

        # Pillow's own bomb check is replaced by ours (a limit the user can raise, one message).
        Image.MAX_IMAGE_PIXELS = None
        limit = max_pixels()
        try:
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                if width * height > limit:
                    raise InputError(
                        path,
                        f"{width}x{height} image ({width * height / 1e6:.0f} MP) is above the decode limit of "
                        f"{limit / 1e6:.0f} MP ({im.format} is decoded whole in memory; a small file declaring a huge "
                        f"image is a decompression bomb); if you trust it, raise the limit with --max-pixels "
                        f"{width * height} (or {MAX_PIXELS_ENV}), or convert it to a tiled TIFF, which streams",
                    )
                if im.format == "PNG" and _is_16bit_colour_png(path):
                    self.values = _decode_png(path)  # Pillow would drop these to 8 bits per channel
                else:
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


def _is_16bit_colour_png(path: Path) -> bool:
    """Whether a PNG is 16-bit RGB/RGBA/gray+alpha, which Pillow decodes to 8 bits per channel.

    (16-bit gray is fine: Pillow keeps it as ``I;16``.)
    """
    with open(path, "rb") as fh:
        head = fh.read(26)
    # Signature (8) + IHDR length/tag (8) + width, height (8) + bit depth + colour type.
    return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _decode_png(path: Path) -> np.ndarray:
    """Decode a PNG at its own bit depth with imagecodecs (libpng/libspng), 16-bit colour included."""
    import imagecodecs

    with open(path, "rb") as fh:
        a = imagecodecs.png_decode(fh.read())
    if a.dtype != np.uint16:
        raise InputError(path, f"PNG decoded to {a.dtype}, expected 16-bit samples")
    return a


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
    """A TIFF/BigTIFF read region by region through tifffile's Zarr interface (never whole).

    Whole-slide and pyramidal files (SVS, NDPI, OME-TIFF with SubIFDs, ...) hold several
    series (the slide, a thumbnail, the label...) and levels: the first series is the
    image, and ``level`` picks its resolution (0, the default, is the full one). Tiles
    compressed with JPEG, LZW, Deflate, JPEG 2000... decode through imagecodecs.
    """

    kind = "image"

    def __init__(self, path: Path, level: int = 0):
        import tifffile
        import zarr

        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            levels = series.levels
        except Exception as exc:
            raise InputError(path, f"corrupt or unreadable TIFF ({exc})") from None
        if not 0 <= level < len(levels):
            self._tif.close()
            have = "one level (0)" if len(levels) == 1 else f"{len(levels)} levels (0..{len(levels) - 1})"
            raise InputError(path, f"--level {level}: the image has {have}")
        series = levels[level]
        try:
            axes = series.axes
            self._zstore = self._tif.aszarr(series=0, level=level)
            z = zarr.open(self._zstore, mode="r")
            if not hasattr(z, "shape"):  # a pyramid opens as a group
                z = z[str(level)]
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
        self.meta = {"source_image": {"format": "ome-tiff" if self._tif.is_ome else "tiff", "series": 0,
                                      "level": int(level), "levels": len(levels), "axes": axes}}
        self._check_not_truncated(series)
        self._check_chunk_size()

    def _check_chunk_size(self) -> None:
        """Refuse a strip or tile larger than the decode limit: each one is decoded whole.

        A TIFF written as one strip is the whole image in one compressed piece, so a tiny
        file can still be a decompression bomb even though TIFFs are otherwise streamed.
        """
        chunks = tuple(int(c) for c in self._z.chunks)
        rows, cols = chunks[1:3] if self._order == "syx" else chunks[:2]
        limit = max_pixels()
        if rows * cols > limit:
            raise InputError(
                self.path,
                f"TIFF stores its image in pieces of {cols}x{rows} pixels ({rows * cols / 1e6:.0f} MP), each decoded "
                f"whole, above the decode limit of {limit / 1e6:.0f} MP; if you trust it, raise the limit with "
                f"--max-pixels {rows * cols} (or {MAX_PIXELS_ENV}), or re-save it tiled (e.g. 512x512 tiles)",
            )

    def _check_not_truncated(self, series) -> None:
        """Refuse a file whose tiles/strips point past its end (cheap: offsets only)."""
        size = self.path.stat().st_size
        for page in series.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size and int((offsets + counts).max()) > size:
                raise InputError(self.path, f"truncated TIFF: image data runs past the end of the file ({size} bytes)")

    def _region(self, index: tuple[slice, ...]) -> np.ndarray:
        """Read a region one Zarr chunk (= one TIFF tile or strip) per call.

        One chunk per call means no concurrent sibling reads: a corrupt tile raises
        here cleanly instead of leaving zarr's pending async reads to spill warnings on
        stderr, and memory stays at the region plus one tile.
        """
        from ..store import block_slices

        index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, self._z.shape))
        out = np.empty(tuple(s.stop - s.start for s in index), dtype=self._z.dtype)
        chunks = self._z.chunks
        # Chunk-aligned pieces of the region: block_slices over the chunk grid, clipped.
        first = tuple(s.start // c * c for s, c in zip(index, chunks))
        span = tuple(s.stop - f for s, f in zip(index, first))
        for piece in block_slices(span, chunks):
            src = tuple(
                slice(max(f + p.start, s.start), min(f + p.stop, s.stop)) for f, p, s in zip(first, piece, index)
            )
            if any(x.start >= x.stop for x in src):
                continue
            dst = tuple(slice(x.start - s.start, x.stop - s.start) for x, s in zip(src, index))
            try:
                out[dst] = self._z[src]
            except Exception as exc:
                raise InputError(self.path, f"corrupt TIFF tile at {[x.start for x in src]} ({exc.__class__.__name__}: {exc})") from None
        return out

    def read(self, slices):
        if self._order == "yx":
            return self._region(tuple(slices))[..., None]
        if self._order == "yxs":
            return self._region(tuple(slices) + (slice(None),))
        return np.moveaxis(self._region((slice(None),) + tuple(slices)), 0, -1)

    def close(self):
        self._zstore.close()
        self._tif.close()


def open_image(path: Path, level: int = 0):
    """Open an image for block reads (TIFF streams; other formats decode once).

    ``level`` is the pyramid level of a multi-resolution TIFF (0: full resolution).
    """
    if path.suffix.lower() in TIFF_SUFFIXES:
        return TiffImage(path, level)
    if level:
        raise InputError(path, f"--level {level}: the image has one level (0); levels are for pyramidal TIFFs")
    return PillowImage(path)
