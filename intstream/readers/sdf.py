"""SDF reader: a mesh or a volume becomes a dense signed-distance grid, block by block.

Meshes (OBJ/PLY/STL/OFF/GLB via trimesh) are normalised into the box [-0.5, 0.5]³: the
bounding box is centred and scaled so that its largest extent is 0.9 (as in the INT
paper). The grid has ``resolution`` voxels per axis at ``linspace(-0.5, 0.5, R)``, which
is the store's coordinate ``linspace(-1, 1, R)`` times 0.5 (see `intstream.normalize`),
so a voxel holds the signed distance at exactly the point the network sees for it.
Grid axes 0, 1, 2 are the mesh's x, y, z. Values are distances in box units, negative
inside (generalised winding number), computed per block by `intstream.sdf_kernels`.

Volumes (``.npy``, Zarr arrays, TIFF stacks with one Z slice per page) are taken as SDF
grids as they are (cast to float32), spread over the same box on every axis.

World coordinates of the mesh come back as ``world = box / scale + center`` with
``meta["sdf"]["transform"]``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["open_sdf", "MeshSDFReader", "VolumeSDFReader", "MESH_SUFFIXES", "MAX_RESOLUTION"]

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
MAX_RESOLUTION = 1024
BOUNDS = (-0.5, 0.5)
# Largest extent of the normalised mesh inside the box (the INT paper leaves a margin).
FILL = 0.9


def open_sdf(path: str | os.PathLike, *, resolution: int = 256):
    """Open a mesh or a volume as an SDF grid reader.

    Parameters
    ----------
    path
        A mesh file (``.obj``, ``.ply``, ``.stl``, ``.off``, ``.glb``, ``.gltf``), a
        ``.npy`` array, a Zarr array or store (``.zarr`` folder), or a TIFF stack.
    resolution
        Voxels per axis of the grid a mesh is sampled on, 2 to 1024 (volumes keep their
        own shape).

    Returns
    -------
    `MeshSDFReader` or `VolumeSDFReader`.

    Raises
    ------
    InputError
        Unreadable or unsuitable input, or a resolution out of range.
    """
    path = Path(path)
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)):
        raise InputError(path, f"--resolution must be an integer (got {resolution!r})")
    if not 2 <= resolution <= MAX_RESOLUTION:
        raise InputError(path, f"--resolution {resolution} is out of range (2 to {MAX_RESOLUTION})")
    if not path.exists():
        raise InputError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix in MESH_SUFFIXES:
        return MeshSDFReader(path, int(resolution))
    if suffix == ".npy":
        return VolumeSDFReader(path, _open_npy(path))
    if suffix in (".tif", ".tiff"):
        return VolumeSDFReader(path, _TiffStack(path))
    if suffix == ".zarr" or (path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))):
        return VolumeSDFReader(path, _open_zarr(path))
    raise InputError(path, f"unsupported format for an SDF {suffix or '(no suffix)'!r} (expected a mesh or a volume)")


class MeshSDFReader:
    """Signed distances of a normalised mesh on an ``R³`` grid, computed per block.

    Attributes
    ----------
    kind, shape, channels, dtype
        ``"sdf"``, ``(R, R, R)``, 1, ``"float32"``.
    meta
        ``{"sdf": {...}}``: bounds, voxel size, the world transform, the source kind and
        mesh statistics (faces, vertices, watertight).
    """

    kind = "sdf"
    channels = 1
    dtype = "float32"

    def __init__(self, path: Path, resolution: int):
        from ..sdf_kernels import prepare_mesh

        self.path = path
        vertices, faces, watertight = _load_mesh(path)
        lo, hi = vertices.min(axis=0), vertices.max(axis=0)
        center = (lo + hi) / 2.0
        scale = FILL / float((hi - lo).max())
        self.resolution = resolution
        self.mesh = prepare_mesh((vertices - center) * scale, faces)
        if self.mesh.n_faces == 0:
            raise InputError(path, "degenerate mesh (every face has zero area)")
        self.shape = (resolution,) * 3
        self.meta = {
            "sdf": {
                "source_kind": "mesh",
                "bounds": list(BOUNDS),
                "voxel_size": (BOUNDS[1] - BOUNDS[0]) / (resolution - 1),
                "resolution": resolution,
                "transform": {"center": [float(c) for c in center], "scale": scale},
                "faces": int(self.mesh.n_faces),
                "vertices": int(len(vertices)),
                "watertight": bool(watertight),
                "sign": "generalised winding number >= 0.5 is inside (negative)",
            }
        }

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Signed distances of a grid block, ``(dx, dy, dz, 1)`` float32."""
        from ..sdf_kernels import sdf_block

        return sdf_block(self.mesh, self.resolution, _check_slices(slices, self.shape))[..., None]

    def close(self) -> None:
        pass


class VolumeSDFReader:
    """A 3-D volume read as an SDF grid as it is (float32), block by block.

    Attributes
    ----------
    kind, shape, channels, dtype
        ``"sdf"``, the volume's 3-D shape, 1, ``"float32"``.
    meta
        ``{"sdf": {...}}``: bounds and per-axis voxel size.
    """

    kind = "sdf"
    channels = 1
    dtype = "float32"

    def __init__(self, path: Path, array):
        self.path = path
        self.array = array
        shape = tuple(int(n) for n in array.shape)
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        elif len(shape) != 3:
            raise InputError(path, f"volume must be 3-D (or 4-D with one channel last), got shape {shape}")
        if min(shape) < 1:
            raise InputError(path, f"empty volume (shape {shape})")
        dt = np.dtype(array.dtype)
        if dt.kind not in "biuf":
            raise InputError(path, f"volume of non-numeric type {dt}")
        self.shape = shape
        self._channel_axis = len(array.shape) == 4
        self.meta = {
            "sdf": {
                "source_kind": "volume",
                "bounds": list(BOUNDS),
                "voxel_size": [(BOUNDS[1] - BOUNDS[0]) / (n - 1) if n > 1 else 0.0 for n in shape],
                "source_dtype": dt.name,
            }
        }

    def read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """The block as float32 ``(dx, dy, dz, 1)``; NaN/Inf are an `InputError`."""
        slices = _check_slices(slices, self.shape)
        key = slices + ((slice(None),) if self._channel_axis else ())
        block = np.asarray(self.array[key], dtype=np.float32).reshape(tuple(s.stop - s.start for s in slices))
        if not np.isfinite(block).all():
            first = np.argwhere(~np.isfinite(block))[0] + [s.start for s in slices]
            raise InputError(self.path, f"volume contains NaN or Inf (first at voxel {tuple(int(i) for i in first)})")
        return block[..., None]

    def close(self) -> None:
        close = getattr(self.array, "close", None)
        if close is not None:
            close()


def _check_slices(slices, shape) -> tuple[slice, slice, slice]:
    """Explicit, in-range, step-1 slices (the kernels index from their starts)."""
    if len(slices) != 3:
        raise ValueError(f"expected 3 slices, got {len(slices)}")
    out = []
    for s, n in zip(slices, shape):
        start, stop, step = s.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"unsupported block slice {s} for an axis of {n}")
        out.append(slice(start, stop))
    return tuple(out)


def _load_mesh(path: Path) -> tuple[np.ndarray, np.ndarray, bool]:
    """Vertices, faces and watertightness of a mesh, with duplicated vertices merged.

    Scans often repeat vertices per face (bunny.obj does): merging restores the shared
    edges that boundary detection (open rims) and watertightness depend on.
    """
    import trimesh

    try:
        # Unprocessed first: processing silently drops NaN/Inf vertices (and their faces).
        mesh = _trimesh_load(path)
    except InputError:
        raise
    except Exception as exc:  # trimesh raises many types for bad files
        raise InputError(path, f"unreadable mesh ({exc.__class__.__name__}: {_one_line(exc)})") from None
    faces = getattr(mesh, "faces", None)
    if faces is None or len(faces) == 0:
        raise InputError(path, "mesh has no faces")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    bad = ~np.isfinite(vertices).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise InputError(path, f"mesh has {int(bad.sum())} of {len(vertices)} vertices with NaN or Inf coordinates "
                               f"(first: vertex {first + 1}, {vertices[first].tolist()})")
    mesh.process()
    mesh.merge_vertices()
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if not faces.size or faces.max() >= len(vertices) or faces.min() < 0:
        raise InputError(path, "mesh faces index missing vertices")
    extent = vertices[faces.ravel()].max(axis=0) - vertices[faces.ravel()].min(axis=0)
    if not float(extent.max()) > 0:
        raise InputError(path, "degenerate mesh (zero extent)")
    return vertices, faces, bool(mesh.is_watertight)


# Text mesh formats whose comments and names may be in any 8-bit encoding.
TEXT_MESH_SUFFIXES = (".obj", ".off")
# A "v x y z" line with a nan/inf token before any comment.
_NONFINITE_OBJ_VERTEX = re.compile(rb"(?im)^[ \t]*v[ \t][^\n#]*?\b(nan|inf|infinity)\b[^\n#]*")


def _trimesh_load(path: Path):
    """The mesh in ``path``, unprocessed; text formats are decoded whatever their encoding.

    OBJ/OFF files from older tools carry Latin-1 or UTF-16 comments, group and material
    names. They are decoded here (UTF-8, else UTF-16 with a byte-order mark, else
    Latin-1, which maps every byte and leaves the ASCII numbers exact) and handed to
    trimesh as UTF-8, so trimesh never guesses (its guess needs an optional package and
    drops what it cannot decode). PLY headers with 8-bit comments are made ASCII.
    """
    import io

    import trimesh

    suffix = path.suffix.lower()
    if suffix in TEXT_MESH_SUFFIXES:
        raw = path.read_bytes()
        if suffix == ".obj":  # trimesh drops vertices no face uses: look at every vertex line
            hit = _NONFINITE_OBJ_VERTEX.search(raw.replace(b"\x00", b""))  # (UTF-16: drop the zero bytes)
            if hit:
                line = raw[: hit.start()].count(b"\n") + 1 if b"\x00" not in raw else None
                where = f"line {line}" if line else "a vertex line"
                raise InputError(path, f"mesh has a vertex with NaN or Inf coordinates ({where}: "
                                       f"{hit.group(0).strip().decode('ascii', 'replace')[:80]!r})")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
                text = raw.decode("utf-16")
            else:
                text = raw.decode("latin-1")
            resolver = trimesh.resolvers.FilePathResolver(str(path))  # mtllib next to the file
            return trimesh.load(io.BytesIO(text.encode("utf-8")), file_type=suffix[1:], force="mesh",
                                process=False, resolver=resolver)
    if suffix == ".ply":
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
        end = head.find(b"end_header")
        if end > 0 and max(head[:end]) >= 0x80:
            # A Latin-1 (or any 8-bit) comment in the ASCII header: trimesh decodes it as
            # UTF-8 and fails. Non-ASCII header bytes (comments, obj_info) become "?",
            # byte for byte, so the binary body after the header is untouched.
            raw = path.read_bytes()
            header = bytes(c if c < 0x80 else 0x3F for c in raw[:end])
            return trimesh.load(io.BytesIO(header + raw[end:]), file_type="ply", force="mesh", process=False)
    return trimesh.load(str(path), force="mesh", process=False)


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:200] if text else "no details"


def _open_npy(path: Path):
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise InputError(path, f"unreadable .npy ({exc.__class__.__name__}: {_one_line(exc)})") from None


def _open_zarr(path: Path):
    """A Zarr array, or the one array of a group (``sdf`` or ``signal`` preferred)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise InputError(path, f"unreadable Zarr ({exc.__class__.__name__}: {_one_line(exc)})") from None
    if not isinstance(node, zarr.Array):
        node = _one_array(path, dict(node.arrays()))
    from .image import refuse_big_chunks

    refuse_big_chunks(path, tuple(node.chunks)[:3], "Zarr volume")  # each chunk is decoded whole
    return node


def _one_array(path: Path, arrays: dict):
    for name in ("sdf", "signal"):
        if name in arrays:
            return arrays[name]
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    names = ", ".join(sorted(arrays)) or "none"
    raise InputError(path, f"Zarr group holds {len(arrays)} arrays ({names}); expected one, or one named 'sdf'")


class _TiffStack:
    """A TIFF volume read page by page: axis 0 is the page (Z), pages are (Y, X).

    Memory per read is the block's Z pages, not the whole stack.
    """

    def __init__(self, path: Path):
        import tifffile

        try:
            self._tif = tifffile.TiffFile(str(path))
            series = self._tif.series[0]
            shape = tuple(int(n) for n in series.shape)
            self._pages = series.pages if hasattr(series, "pages") else self._tif.pages
            self.dtype = np.dtype(series.dtype)
        except Exception as exc:
            raise InputError(path, f"unreadable TIFF ({exc.__class__.__name__}: {_one_line(exc)})") from None
        if len(shape) == 2:
            shape = (1,) + shape
        self.shape = shape
        self._page_shape = shape[1:]

    def __getitem__(self, key):
        z, rest = key[0], key[1:]
        planes = [np.asarray(self._pages[i].asarray()).reshape(self._page_shape)[rest] for i in range(*z.indices(self.shape[0]))]
        return np.stack(planes)

    def close(self) -> None:
        self._tif.close()
