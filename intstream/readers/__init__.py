"""Source readers: each turns one file format into blocks of a grid signal.

Every reader exposes the same small interface, which `intstream.ingest` drives:

``kind``, ``shape`` (grid shape), ``channels``, ``dtype`` (stored dtype name), ``meta``
(extra store attributes) and ``read(slices) -> ndarray`` returning the stored values of
a grid block (channel axis last), plus ``close()``. Readers stream: ``read`` touches only
the part of the file the block needs wherever the format allows it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

__all__ = ["SUFFIXES", "RemoteSource", "detect_kind", "open_reader", "source_path"]

SUFFIXES = {
    "image": (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".btf", ".tf8", ".svs", ".ndpi"),
    "audio": (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff"),
    "mesh": (".obj", ".ply", ".stl", ".off", ".glb", ".gltf"),
    "volume": (".npy", ".zarr"),
}


class RemoteSource:
    """A source at a URL fsspec reaches: a Zarr array or group, or an OME-Zarr image.

    Behaves enough like a path for ingest: ``name``, and ``os.fspath`` gives the URL.
    """

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.name = self.url.rsplit("/", 1)[-1]

    def __fspath__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemoteSource({self.url!r})"


def source_path(source) -> "Path | RemoteSource":
    """A local source as an absolute `Path` (``file://`` URLs included), else a `RemoteSource`."""
    import os

    from ..store import store_location, url_scheme

    text = os.fspath(source)
    scheme = url_scheme(text)
    if scheme is None:
        return Path(text).absolute()
    if scheme == "file":
        return Path(store_location(text))
    return RemoteSource(text)


def _open_remote(src: RemoteSource, kind: str, level: int):
    """Readers for URL sources: OME-Zarr images and Zarr arrays (other formats are local files)."""
    from .omezarr import multiscales

    try:
        ms = multiscales(src)
    except Exception:
        ms = None
    if ms is not None:
        return _open_ome(src, kind, level)
    if kind not in ("auto", "array"):
        raise InputError(src, f"--kind {kind}: only Zarr arrays and OME-Zarr images are read from URLs "
                              "(copy other files locally)")
    if level:
        raise InputError(src, f"--level {level}: levels are for pyramidal TIFFs and OME-Zarr images")
    from .array import open_array

    return open_array(src)


def _family(path: Path) -> str | None:
    if path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zarray", ".zgroup")):
        from .omezarr import multiscales

        return "ome" if multiscales(path) is not None else "volume"  # OME-Zarr: its metadata decides
    suffix = path.suffix.lower()
    for family, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return family
    return None


def detect_kind(path: Path) -> str:
    """The signal kind a file holds, from its name (content is checked by the reader)."""
    family = _family(path)
    if family is None:
        raise InputError(path, f"unsupported format {path.suffix or '(no suffix)'!r}")
    return {"image": "image", "audio": "audio", "mesh": "sdf", "volume": "array"}[family]


def open_reader(path: Path, kind: str = "auto", *, resolution: int = 256, level: int = 0):
    """Open a reader for ``path`` as ``kind`` (``auto`` guesses from the name).

    ``level`` is the resolution level of a pyramidal TIFF (SVS, NDPI, OME-TIFF) or an
    OME-Zarr image (0: the full resolution). ``path`` may be a `RemoteSource` (a Zarr
    array or OME-Zarr image at a URL, see `source_path`).
    """
    if isinstance(path, RemoteSource):
        return _open_remote(path, kind, level)
    if not path.exists():
        raise InputError(path, "no such file")
    if not path.is_dir():
        try:
            with open(path, "rb") as fh:
                head = fh.read(1)
        except OSError as exc:
            raise InputError(path, f"cannot read ({exc.strerror})") from None
        if not head:
            raise InputError(path, "empty file")
    family = _family(path)
    if family == "ome":
        return _open_ome(path, kind, level)
    if level and not (family == "image" and kind in ("auto", "image")):
        raise InputError(path, f"--level {level}: levels are for pyramidal TIFFs and OME-Zarr images")
    if kind == "auto":
        kind = detect_kind(path)
    allowed = {"image": ("image",), "audio": ("audio",), "sdf": ("mesh", "volume", "image"), "array": ("volume",)}
    if family not in allowed.get(kind, ()):
        what = {"image": "an image", "audio": "an audio file", "mesh": "a mesh", "volume": "an array"}.get(family)
        found = f"looks like {what}" if what else f"has an unsupported format {path.suffix!r}"
        raise InputError(path, f"--kind {kind} does not match: the file {found}")
    if kind == "image":
        from .image import open_image

        return open_image(path, level)
    if kind == "audio":
        from .audio import open_audio

        return open_audio(path)
    if kind == "sdf":
        from .sdf import open_sdf

        return open_sdf(path, resolution=resolution)
    from .array import open_array

    return open_array(path)


def _open_ome(path: Path, kind: str, level: int):
    """An OME-Zarr reader: the axes metadata make it an image (y, x) or an array volume."""
    from .omezarr import open_ome_zarr

    if kind not in ("auto", "image", "array"):
        raise InputError(path, f"--kind {kind} does not match: the file looks like an OME-Zarr image")
    reader = open_ome_zarr(path, level)
    if kind == "image" and reader.kind != "image":
        raise InputError(path, f"--kind image does not match: the OME-Zarr level has {len(reader.shape)} space axes "
                               f"({', '.join(reader.meta['source_image']['grid_axes'])}) and dtype {reader.dtype}")
    if kind == "array":
        reader.kind = "array"
    return reader
