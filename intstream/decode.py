"""Decode a fitted network to a file, streaming: PNG, tiled BigTIFF, WAV/FLAC, PLY/OBJ, Zarr.

The network is evaluated block by block on the output grid (`predict_blocks`); a writer
consumes the blocks in the order it needs and converts predictions back to stored
values through `Normalisation.inverse` (the one place of the inverse mapping). Memory
is one block plus what the format itself keeps (the whole image for PNG, the mesh for
PLY/OBJ); TIFF, audio and Zarr outputs never hold more than a block.

Every output is written under a temporary name and renamed into place when complete
(`intstream.atomic`), so a failed decode leaves nothing behind.

Writers share one small interface: ``block`` (the grid block they want, row-major
order) and ``consume(blocks)`` taking an iterator of ``(slices, targets)`` where
``targets`` is the float32 prediction block, grid shape + (channels,).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .atomic import atomic_output, check_output_path
from .device import resolve_device
from .errors import InputError
from .plan import predict_batch
from .metrics import SlabMesher, sdf_geometry
from .normalize import Normalisation, block_coords
from .store import block_slices

__all__ = [
    "FORMATS",
    "output_format",
    "parse_shape",
    "resolve_device",
    "predict_blocks",
    "default_block",
    "sdf_slab",
    "sdf_geometry",
    "world_transform",
    "open_writer",
    "check_decode_output",
    "refuse_inside_inputs",
    "decode_sizes",
    "decode",
]

# suffix -> (format, kinds it can hold)
FORMATS = {
    ".png": ("png", ("image",)),
    ".tif": ("tiff", ("image",)),
    ".tiff": ("tiff", ("image",)),
    ".btf": ("tiff", ("image",)),
    ".wav": ("wav", ("audio",)),
    ".flac": ("flac", ("audio",)),
    ".ply": ("ply", ("sdf",)),
    ".obj": ("obj", ("sdf",)),
    ".zarr": ("zarr", ("image", "audio", "sdf", "array")),
}
# Names ending so (checked before the suffix): viewer formats with a resolution pyramid.
PYRAMID_FORMATS = {
    ".ome.tif": ("ome-tiff", ("image",)),
    ".ome.tiff": ("ome-tiff", ("image",)),
    ".ome.zarr": ("ome-zarr", ("image", "array")),
}
# Pyramid levels halve the grid until its longest side fits in this many samples.
PYRAMID_TOP = 512
# PNG is written from one in-memory array: keep it for images a viewer can open.
MAX_PNG_PIXELS = 1 << 26
TIFF_TILE = 512
AUDIO_BLOCK = 1 << 18
# Samples per SDF slab (whole planes along axis 0): bounds memory for meshes and IoU.
SDF_SLAB_SAMPLES = 1 << 21


def output_format(path: str | os.PathLike, kind: str) -> str:
    """The format for an output path, checked against the signal kind."""
    name = Path(path).name.lower()
    for ending, (fmt, kinds) in PYRAMID_FORMATS.items():
        if name.endswith(ending):
            if kind not in kinds:
                raise InputError(path, f"a {kind} signal cannot be decoded to {ending} (use {_suffixes_for(kind)})")
            return fmt
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(sorted(FORMATS))
        raise InputError(path, f"unknown output format {suffix or '(no suffix)'!r} (expected one of {known})")
    fmt, kinds = FORMATS[suffix]
    if kind not in kinds:
        raise InputError(path, f"a {kind} signal cannot be decoded to {suffix} (use {_suffixes_for(kind)})")
    return fmt


def _suffixes_for(kind: str) -> str:
    return ", ".join(s for s, (_, kinds) in {**FORMATS, **PYRAMID_FORMATS}.items() if kind in kinds)


def parse_shape(text: str | None, ndim: int) -> tuple[int, ...] | None:
    """``"768,512"`` / ``"768x512"`` -> ``(768, 512)``; checked against the grid's axes."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise InputError(None, f"--shape {text!r} is not a list of integers like 768,512") from None
    if len(shape) != ndim:
        raise InputError(None, f"--shape {text!r} has {len(shape)} axes; the signal has {ndim}")
    if any(n < 1 for n in shape):
        raise InputError(None, f"--shape {text!r}: sizes must be positive")
    return shape


def default_block(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A block shape for decoding when neither a store nor a writer decides it."""
    if kind == "audio":
        return (min(AUDIO_BLOCK, shape[0]),)
    if kind == "sdf":
        return sdf_slab(shape)
    return tuple(min(1024, n) for n in shape)


def sdf_slab(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Slabs of whole planes along axis 0 (meshing carries one plane between slabs)."""
    plane = math.prod(shape[1:])
    return (max(1, min(shape[0], SDF_SLAB_SAMPLES // max(plane, 1))),) + tuple(shape[1:])


def world_transform(signal: dict):
    """``box -> world`` for meshes ingested from a mesh file (``world = box / scale + center``), or None."""
    t = (signal.get("sdf") or {}).get("transform")
    if not t or "scale" not in t or "center" not in t:
        return None
    scale, center = float(t["scale"]), np.asarray(t["center"], dtype=np.float64)
    return lambda v: v / scale + center


def predict_blocks(
    model,
    shape: tuple[int, ...],
    extent: tuple[float, ...],
    blocks: Iterable[tuple[slice, ...]],
    *,
    batch: int = 65536,
) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    """Yield ``(slices, predictions)`` for each block: float32, block shape + (channels,).

    Coordinates are computed from indices (``linspace(-extent, extent, n)`` per axis at
    the given ``shape``), so any ``shape`` decodes the same continuous signal.
    """
    import torch

    from .models import predict

    for slices in blocks:
        coords = torch.from_numpy(block_coords(shape, extent, slices))
        pred = predict(model, coords, batch=batch).cpu().numpy()
        yield slices, pred.reshape(tuple(s.stop - s.start for s in slices) + (-1,))


# -- writers ------------------------------------------------------------------------


class _PNG:
    def __init__(self, tmp: Path, shape, channels: int, norm: Normalisation):
        if math.prod(shape) > MAX_PNG_PIXELS:
            raise InputError(None, f"a {shape[0]}x{shape[1]} image is too big for PNG (write .tif instead)")
        dt = np.dtype(norm.dtype)
        if dt not in (np.uint8, np.uint16) or (dt == np.uint16 and channels != 1):
            raise InputError(None, f"PNG cannot hold {channels}-channel {dt.name} images (write .tif instead)")
        if channels not in (1, 3, 4):
            raise InputError(None, f"PNG cannot hold {channels}-channel images (write .tif or .zarr instead)")
        self.tmp, self.norm = tmp, norm
        self.array = np.zeros(tuple(shape) + (channels,), dtype=dt)
        self.block = tuple(min(1024, n) for n in shape)

    def consume(self, blocks):
        from PIL import Image

        for slices, pred in blocks:
            self.array[slices] = self.norm.inverse(pred)
        a = self.array[..., 0] if self.array.shape[-1] == 1 else self.array
        Image.fromarray(a).save(self.tmp, format="PNG")


class _TIFF:
    def __init__(self, tmp: Path, shape, channels: int, norm: Normalisation):
        self.tmp, self.shape, self.channels, self.norm = tmp, tuple(shape), channels, norm
        self.block = (TIFF_TILE, TIFF_TILE)

    def consume(self, blocks):
        import tifffile

        dt = np.dtype(self.norm.dtype)
        squeeze = self.channels == 1

        def tiles():
            # tifffile pulls tiles in row-major order and pads ragged edge tiles itself.
            for _, pred in blocks:
                v = self.norm.inverse(pred)
                yield v[..., 0] if squeeze else v

        shape = self.shape if squeeze else self.shape + (self.channels,)
        photometric = "rgb" if self.channels in (3, 4) and dt == np.uint8 else "minisblack"
        extra = {"extrasamples": [2]} if self.channels == 4 and photometric == "rgb" else {}
        tifffile.imwrite(
            self.tmp,
            data=tiles(),
            shape=shape,
            dtype=dt,
            tile=self.block,
            bigtiff=True,
            photometric=photometric,
            planarconfig="contig",
            compression="zlib",
            compressionargs={"level": 1},  # the network, not zlib, should set the pace
            **extra,
        )


def pyramid_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Grid shapes of a resolution pyramid: ``shape``, then halved (rounded up) until the
    longest side is at most `PYRAMID_TOP`."""
    levels = [tuple(shape)]
    while max(levels[-1]) > PYRAMID_TOP:
        levels.append(tuple(-(-n // 2) for n in levels[-1]))
    return levels


class _Levels:
    """Renders the reduced levels of a pyramid from the weights themselves.

    Level ``k`` is the network evaluated on a grid twice as fine as the level's and
    averaged over each 2 x 2 (x 2) cell: a box filter, so a reduced level shows the
    signal, not the aliasing a point sample of a fine signal would give. The model is
    built on the CPU (or the default device) from the weights the writer decodes.
    """

    def __init__(self, weights, norm: Normalisation, batch: int = 65536):
        self.weights, self.norm, self.batch = weights, norm, batch
        self._model = None

    def blocks(self, shape: tuple[int, ...], block: tuple[int, ...]) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        """``(slices, stored values)`` of ``shape`` in row-major blocks of ``block``."""
        if self._model is None:
            self._model = self.weights.model(resolve_device("auto"))
            self.batch = predict_batch(self.weights.model_config, self.weights.state, self.batch)
        fine = tuple(2 * n for n in shape)
        extent = self.weights.norm.extent
        for sl in block_slices(shape, block):
            fsl = tuple(slice(2 * x.start, 2 * x.stop) for x in sl)
            _, pred = next(predict_blocks(self._model, fine, extent, [fsl], batch=self.batch))
            cells = []
            for x in sl:
                cells += [x.stop - x.start, 2]
            pred = pred.reshape(tuple(cells) + (pred.shape[-1],)).mean(axis=tuple(range(1, 2 * len(sl), 2)))
            yield sl, self.norm.inverse(pred)


class _OMETIFF:
    """A tiled, pyramidal OME-TIFF (BigTIFF; reduced levels in SubIFDs), written by tifffile.

    QuPath, napari (tifffile), Bio-Formats and OpenSlide-style viewers open it at any zoom.
    Level 0 streams from the decode's blocks; the others come from `_Levels`.
    """

    def __init__(self, tmp: Path, shape, channels: int, norm: Normalisation, weights):
        self.tmp, self.shape, self.channels, self.norm = tmp, tuple(shape), channels, norm
        self.block = (TIFF_TILE, TIFF_TILE)
        self.levels = pyramid_shapes(self.shape)
        self._render = _Levels(weights, norm)

    def consume(self, blocks):
        import tifffile

        dt = np.dtype(self.norm.dtype)
        squeeze = self.channels == 1

        def tiles(pairs):
            for _, v in pairs:
                yield v[..., 0] if squeeze else v

        rgb = self.channels in (3, 4) and dt == np.uint8
        opts = dict(
            dtype=dt,
            tile=self.block,
            photometric="rgb" if rgb else "minisblack",
            planarconfig=None if squeeze else "contig",
            compression="zlib",
            compressionargs={"level": 1},
            **({"extrasamples": [2]} if self.channels == 4 and rgb else {}),
        )
        level_shape = lambda shp: shp if squeeze else shp + (self.channels,)  # noqa: E731
        with tifffile.TiffWriter(self.tmp, bigtiff=True, ome=True) as tif:
            tif.write(
                data=tiles((sl, self.norm.inverse(pred)) for sl, pred in blocks),
                shape=level_shape(self.shape),
                subifds=len(self.levels) - 1,
                metadata={"axes": "YX" if squeeze else "YXS", "Name": "intstream decode"},
                **opts,
            )
            for shp in self.levels[1:]:
                tif.write(data=tiles(self._render.blocks(shp, self.block)), shape=level_shape(shp),
                          subfiletype=1, **opts)


class _OMEZarr:
    """An OME-Zarr (NGFF 0.5, Zarr v3) image with a multiscales pyramid: arrays ``0``, ``1``...

    Axes are ``c, y, x`` for images and ``c, z, y, x`` (or ``c, y, x``) for 3-D/2-D
    arrays, with a ``scale`` transform per level; the metadata is written by the
    ``ome-zarr`` package so napari's ome-zarr reader and QuPath open it.
    """

    def __init__(self, tmp: Path, shape, channels: int, norm: Normalisation, weights):
        if len(shape) not in (2, 3):
            raise InputError(None, f"OME-Zarr holds 2-D or 3-D images; this signal has {len(shape)} axes (write .zarr)")
        try:
            import ome_zarr.writer  # noqa: F401
        except ImportError:
            raise InputError(None, "decoding to .ome.zarr needs the ome-zarr package (pip install 'intstream[ome]')") from None
        self.tmp, self.shape, self.channels, self.norm = tmp, tuple(shape), channels, norm
        edge = TIFF_TILE if len(shape) == 2 else 64
        self.block = tuple(min(edge, n) for n in shape)
        self.levels = pyramid_shapes(self.shape)
        self._render = _Levels(weights, norm)

    def _write(self, array, pairs) -> None:
        for sl, v in pairs:
            array[(slice(None),) + tuple(sl)] = np.moveaxis(v, -1, 0)

    def consume(self, blocks):
        import zarr
        from ome_zarr.format import FormatV05
        from ome_zarr.writer import write_multiscales_metadata
        from zarr.codecs import BloscCodec

        dt = np.dtype(self.norm.dtype)
        group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        arrays = []
        for k, shp in enumerate(self.levels):
            arrays.append(group.create_array(
                str(k), shape=(self.channels,) + shp, chunks=(self.channels,) + tuple(min(b, n) for b, n in zip(self.block, shp)),
                dtype=dt, fill_value=0, compressors=BloscCodec(cname="zstd", clevel=3),
                dimension_names=["c"] + (["y", "x"] if len(shp) == 2 else ["z", "y", "x"]),
            ))
        self._write(arrays[0], ((sl, self.norm.inverse(pred)) for sl, pred in blocks))
        for k, shp in enumerate(self.levels[1:], start=1):
            self._write(arrays[k], self._render.blocks(shp, self.block))
        spatial = ["y", "x"] if len(self.shape) == 2 else ["z", "y", "x"]
        axes = [{"name": "c", "type": "channel"}] + [{"name": a, "type": "space"} for a in spatial]
        datasets = [
            {"path": str(k), "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] + [n0 / n for n0, n in zip(self.shape, shp)]}]}
            for k, shp in enumerate(self.levels)
        ]
        write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=axes, name="intstream decode")


class _Audio:
    _SUBTYPES = {
        ("wav", "int16"): "PCM_16",
        ("wav", "int32"): "PCM_32",
        ("wav", "float32"): "FLOAT",
        ("flac", "int16"): "PCM_16",
        ("flac", "int32"): "PCM_24",
        ("flac", "float32"): "PCM_24",
    }

    def __init__(self, tmp: Path, fmt: str, shape, channels: int, norm: Normalisation, sample_rate: int):
        dt = np.dtype(norm.dtype).name
        if (fmt, dt) not in self._SUBTYPES:
            raise InputError(None, f"{fmt.upper()} cannot hold {dt} audio (write .zarr instead)")
        self.tmp, self.fmt, self.channels, self.norm = tmp, fmt, channels, norm
        self.subtype = self._SUBTYPES[(fmt, dt)]
        self.sample_rate = int(sample_rate)
        self.block = (min(AUDIO_BLOCK, shape[0]),)

    def consume(self, blocks):
        import soundfile as sf

        with sf.SoundFile(
            str(self.tmp), "w", samplerate=self.sample_rate, channels=self.channels,
            subtype=self.subtype, format=self.fmt.upper(),
        ) as f:
            for _, pred in blocks:
                f.write(self.norm.inverse(pred))


class _Mesh:
    """Marching cubes over slabs of whole planes; one plane is carried to the next slab."""

    def __init__(self, tmp: Path, fmt: str, shape, signal: dict):
        self.tmp, self.fmt, self.shape = tmp, fmt, tuple(shape)
        self.origin, self.spacing = sdf_geometry(signal, self.shape)
        self.to_world = world_transform(signal)
        self.block = sdf_slab(self.shape)

    def consume(self, blocks):
        import trimesh

        mesher = SlabMesher(self.origin, self.spacing)
        for slices, pred in blocks:
            mesher.add(slices[0].start, pred[..., 0])
        verts, faces = mesher.mesh()
        if self.to_world is not None and len(verts):
            verts = self.to_world(verts)  # back in the source mesh's frame, to overlay it
        mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
        # Vertices on slab boundaries are meshed twice; weld them for a clean surface.
        mesh.merge_vertices(digits_vertex=6)
        mesh.export(self.tmp, file_type=self.fmt)


class _Zarr:
    def __init__(self, writer, norm: Normalisation):
        self.writer, self.norm = writer, norm
        self.block = writer.write_block

    def consume(self, blocks):
        for slices, pred in blocks:
            self.writer.write(slices, self.norm.inverse(pred))


def _zarr_meta(weights, shape: tuple[int, ...]) -> dict:
    """Store attributes for a decoded store: the fitted signal's, adapted to ``shape``."""
    skip = {"format_version", "kind", "shape", "channels", "dtype", "chunks", "shards", "source",
            "complete", "normalisation"}
    meta = {k: v for k, v in weights.signal.items() if k not in skip}
    old = weights.shape
    if weights.kind == "audio" and "sample_rate" in meta and shape != old:
        # Same time span, more or fewer samples across it.
        meta["sample_rate"] = _resampled_rate(meta["sample_rate"], old[0], shape[0])
    meta["decoded_from"] = {
        "weights": str(weights.path),
        "source": weights.signal.get("source"),
        "shape": list(old),
        "normalisation": weights.signal["normalisation"],
    }
    return meta


def _resampled_rate(rate: float, n_old: int, n_new: int) -> int:
    return int(round(float(rate) * max(n_new - 1, 1) / max(n_old - 1, 1)))


# Memory a decode may hold at once when the caller gives no budget (fit's default budget).
DECODE_MEMORY = 2 << 30
# Keep this share of the free disk free: a decode never fills the file system.
DISK_HEADROOM = 0.95
# Bytes per grid-face sample of a decoded mesh (vertex + two faces, in memory and as text).
MESH_BYTES_PER_SURFACE_SAMPLE = 128


def decode_sizes(fmt: str, weights, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(disk_bytes, memory_bytes)``: estimates for decoding ``weights`` at ``shape`` to ``fmt``.

    Disk is the raw size of the output (formats that compress write less); memory is
    what the writer holds at once beyond one block: the whole image for PNG, the mesh
    (about the grid's bounding surface times `MESH_BYTES_PER_SURFACE_SAMPLE`) plus two
    planes for PLY/OBJ, one block otherwise.
    """
    samples = math.prod(shape)
    itemsize = np.dtype(weights.norm.dtype).itemsize
    raw = samples * weights.channels * itemsize
    block = math.prod(default_block(weights.kind, shape)) * (len(shape) + 2 * weights.channels) * 4
    if fmt in ("ply", "obj"):
        surface = sum(math.prod(shape) // max(n, 1) for n in shape)  # faces of the grid box
        mesh = 2 * surface * MESH_BYTES_PER_SURFACE_SAMPLE
        plane = math.prod(shape[1:]) * (len(shape) + 2) * 4
        return mesh, mesh + 2 * plane + block
    if fmt == "png":
        return raw, raw + block
    return raw, block


def refuse_inside_inputs(out: str | os.PathLike, weights, inputs: tuple = ()) -> None:
    """Refuse an output (file or folder) that is the weights, their store or one of ``inputs``, or lies inside one.

    Paths are compared resolved, so a link does not hide the input; URLs other than
    ``file://`` are not local inputs and are skipped.
    """
    from .store import local_store_path, url_scheme

    out_r = Path(out).absolute().resolve()
    for src in (weights.path, weights.store_path, *inputs):
        if not src:
            continue
        if url_scheme(src):
            src = local_store_path(src)
            if src is None:
                continue
        src_r = Path(src).absolute().resolve()
        if out_r == src_r or src_r in out_r.parents:
            raise InputError(out, f"output would be written inside the input {src}")


def check_decode_output(
    path: str | os.PathLike,
    weights,
    shape: tuple[int, ...],
    *,
    overwrite: bool = False,
    inputs: tuple = (),
    memory_budget: int | None = None,
) -> tuple[str, Path]:
    """Refuse, before any work, a decode output that cannot or must not be written.

    The format must hold the signal's kind; the output must not exist (without
    ``overwrite``) and must never be the weights, the store they were fitted to or any
    of ``inputs``, nor lie inside one; its estimated size (`decode_sizes`) must fit the
    free disk and its in-memory part ``memory_budget`` (default `DECODE_MEMORY`).
    Returns ``(format, absolute output path)``; raises `InputError` naming the output.
    """
    import shutil

    from .store import local_store_path, store_location, url_scheme

    fmt = output_format(path, weights.kind)
    if len(shape) != len(weights.shape) or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in shape):
        raise InputError(path, f"decode shape {tuple(shape)} is not {len(weights.shape)} positive integers")
    if url_scheme(path):
        if local_store_path(path) is None:  # memory://, s3://...: only a store; create_store checks the rest
            if fmt != "zarr":
                raise InputError(path, f"only a .zarr store can be decoded to a {url_scheme(path)}:// URL")
            return fmt, store_location(path)
        path = store_location(path)  # file:// -> its path
    sources = [p for p in (weights.path, weights.store_path, *inputs) if p]
    out = check_output_path(path, overwrite=overwrite, inputs=tuple(sources))
    if out.exists() or out.is_symlink():  # --overwrite replaces a decode, never something else
        is_store = out.is_dir() and any((out / m).exists() for m in ("zarr.json", ".zgroup", ".zarray"))
        if fmt == "zarr" and not is_store:
            raise InputError(out, "exists and is not a Zarr store; not replacing it")
        if fmt != "zarr" and (out.is_dir() or not out.is_file()):
            raise InputError(out, "exists and is a folder or a special file, not a file; not replacing it")
    refuse_inside_inputs(out, weights, inputs)
    disk, memory = decode_sizes(fmt, weights, tuple(shape))
    budget = DECODE_MEMORY if memory_budget is None else int(memory_budget)
    where = "x".join(str(n) for n in shape)
    if memory > budget:
        raise InputError(out, f"decoding at {where} to {Path(out).suffix} would hold about {_human(memory)} in memory, "
                              f"above the {_human(budget)} budget (decode to {'.tif or ' if fmt == 'png' else ''}"
                              f".zarr, which stream, or give a smaller --shape)")
    free = shutil.disk_usage(out.parent).free
    if out.exists() and out.is_file():
        free += out.stat().st_size  # replaced only once the new one is complete, but counted as freed
    if disk > free * DISK_HEADROOM:
        raise InputError(out, f"decoding at {where} would write about {_human(disk)}, more than the "
                              f"{_human(free)} free on {out.parent} (pass a smaller --shape)")
    return fmt, out


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


@contextlib.contextmanager
def open_writer(path: str | os.PathLike, weights, shape: tuple[int, ...], *, overwrite: bool = False,
                memory_budget: int | None = None):
    """A writer for ``path`` (format from the suffix); the file appears only on success.

    ``weights`` is an `intstream.export.Weights`; ``shape`` the output grid shape.
    """
    fmt, out = check_decode_output(path, weights, shape, overwrite=overwrite, memory_budget=memory_budget)
    norm, channels = weights.norm, weights.channels
    if fmt == "zarr":
        from .store import create_store

        value_range = weights.signal.get("value_range")
        with create_store(out, kind=weights.kind, shape=shape, channels=channels, dtype=norm.dtype,
                          meta={**_zarr_meta(weights, shape), "value_range": value_range},
                          overwrite=overwrite) as w:
            yield _Zarr(w, norm)
        return
    with atomic_output(out, overwrite=overwrite) as tmp:  # no clobbering at the rename
        try:
            if fmt == "png":
                writer = _PNG(tmp, shape, channels, norm)
            elif fmt == "tiff":
                writer = _TIFF(tmp, shape, channels, norm)
            elif fmt == "ome-tiff":
                writer = _OMETIFF(tmp, shape, channels, norm, weights)
            elif fmt == "ome-zarr":
                writer = _OMEZarr(tmp, shape, channels, norm, weights)
            elif fmt in ("wav", "flac"):
                rate = weights.signal.get("sample_rate")
                if not rate:
                    raise InputError(None, "no sample rate recorded; decode to .zarr instead")
                writer = _Audio(tmp, fmt, shape, channels, norm, _resampled_rate(rate, weights.shape[0], shape[0]))
            else:
                writer = _Mesh(tmp, fmt, shape, weights.signal)
        except InputError as exc:  # name the output the problem is about
            raise InputError(out, exc.problem) if exc.path is None else exc from None
        yield writer
        if not tmp.exists():
            raise RuntimeError(f"{fmt} writer produced no file")


def decode(
    weights,
    output: str | os.PathLike,
    *,
    shape: tuple[int, ...] | None = None,
    device: str = "auto",
    batch: int = 65536,
    overwrite: bool = False,
) -> dict:
    """Decode ``weights`` (an `intstream.export.Weights`) to ``output`` without a store.

    Returns ``{"decoded": path, "shape": [...], "seconds": ...}``.
    """
    t0 = time.perf_counter()
    shape = tuple(shape) if shape is not None else weights.shape
    model = weights.model(resolve_device(device))
    batch = predict_batch(weights.model_config, weights.state, batch)  # the memory plan, DESIGN §10
    with open_writer(output, weights, shape, overwrite=overwrite) as writer:
        writer.consume(predict_blocks(model, shape, weights.norm.extent, block_slices(shape, writer.block), batch=batch))
    return {"decoded": output_location(output), "shape": list(shape), "seconds": round(time.perf_counter() - t0, 3)}


def output_location(output: str | os.PathLike) -> str:
    """How a decode output is reported: its absolute path, or its URL."""
    from .store import store_location

    return store_location(output)

