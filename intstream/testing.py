"""Generated signals for tests and benchmarks (the one place that makes them).

Every generator is deterministic in ``seed`` and computes values from *global* sample
indices, so a signal made block by block is identical to the same signal made whole.
That is what lets the big ones stream: `write_tiled_tiff`, `write_audio` and
`make_image_store` never hold more than one tile, block or shard in memory.

Content is "smooth plus detail": a few low-frequency separable waves, a ring
(zone-plate-like) pattern, higher-frequency texture and hashed per-sample noise, so
that INR fitting has something to learn at every scale and compression is not trivial.

Also the few helpers several test modules share: `train_full_batch` (a small SIREN fitted
full-batch, for fit-style checkpoints) and `cli_manifest`/`cli_refused` (what a CLI run
printed, checked).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = [
    "image_block",
    "make_image",
    "write_tiled_tiff",
    "write_png",
    "audio_block",
    "make_audio",
    "write_audio",
    "make_image_store",
    "make_sphere_mesh",
    "train_full_batch",
    "cli_manifest",
    "cli_refused",
]


def train_full_batch(store, *, width: int, depth: int, steps: int, lr: float = 1e-3, seed: int = 0,
                     omega0: float = 30.0, cosine: bool = True):
    """A small SIREN for ``store``, trained ``steps`` full-batch Adam steps on one thread
    (cosine decay to 1e-6 when ``cosine``, the paper's optimiser). Returns ``(ModelConfig, model)``."""
    import torch

    from .models import ModelConfig, build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: threads only add synchronisation (and CI shares cores)
    try:
        torch.manual_seed(seed)
        cfg = ModelConfig(in_dim=store.ndim, out_dim=store.channels, width=width, depth=depth, omega0=omega0)
        model = build_model(cfg)
        if steps:
            x, y = (torch.from_numpy(a) for a in store.load_all())
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-6) if cosine else None
            for _ in range(steps):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                if sched is not None:
                    sched.step()
    finally:
        torch.set_num_threads(threads)
    return cfg, model


def cli_manifest(result) -> dict:
    """The JSON manifest of a successful CLI run (a click ``Result``)."""
    import json

    assert result.exit_code == 0, (result.exit_code, result.output)
    return json.loads(result.stdout.splitlines()[-1])


def cli_refused(result, *words) -> str:
    """Check a CLI run was refused as bad input: exit 2, nothing on stdout, no traceback, its
    last stderr line naming each of ``words``; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == "" and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in line, (w, line)
    return line

_INT_MAX = {"uint8": 255.0, "uint16": 65535.0, "int16": 32767.0}


# -- noise ------------------------------------------------------------------------
def _hash_noise(index: np.ndarray, seed: int) -> np.ndarray:
    """Uniform noise in [-0.5, 0.5) from a splitmix64 hash of global sample indices."""
    with np.errstate(over="ignore"):
        z = index.astype(np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(40)).astype(np.float32) / np.float32(2**24)) - np.float32(0.5)


def _to_dtype(v: np.ndarray, dtype: str) -> np.ndarray:
    """Values in [0, 1] -> ``dtype`` (integers use the full range; floats stay in [0, 1])."""
    dt = np.dtype(dtype)
    v = np.clip(v, 0.0, 1.0)
    if dt.kind == "f":
        return v.astype(dt)
    if dt.kind == "i":  # signed: centre on zero
        return np.rint((v * 2.0 - 1.0) * np.iinfo(dt).max).astype(dt)
    return np.rint(v * float(np.iinfo(dt).max)).astype(dt)


# -- images -----------------------------------------------------------------------
def _image_params(channels: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    params = []
    for _ in range(channels):
        params.append(
            {
                # Low frequencies (cycles over the image) and a little higher texture.
                "fy": rng.uniform(0.5, 3.0, 4) * 2 * np.pi,
                "fx": rng.uniform(0.5, 3.0, 4) * 2 * np.pi,
                "py": rng.uniform(0, 2 * np.pi, 4),
                "px": rng.uniform(0, 2 * np.pi, 4),
                "amp": rng.uniform(0.05, 0.12, 4),
                "ty": rng.uniform(20, 60) * 2 * np.pi,
                "tx": rng.uniform(20, 60) * 2 * np.pi,
                "centre": rng.uniform(0.3, 0.7, 2),
                "ring": rng.uniform(15, 40) * 2 * np.pi,
            }
        )
    return params


def image_block(
    shape: tuple[int, int],
    rows: slice,
    cols: slice,
    *,
    channels: int = 3,
    dtype: str = "uint8",
    seed: int = 0,
) -> np.ndarray:
    """The block ``[rows, cols]`` of the generated image of grid ``shape``, ``(h, w, channels)``.

    Parameters
    ----------
    shape
        The whole image's ``(height, width)``: coordinates are relative to it, so blocks
        tile seamlessly.
    rows, cols
        The block (``start``/``stop`` within ``shape``; steps are not supported).
    channels, dtype, seed
        As in `make_image`.

    Returns
    -------
    ndarray
        ``(rows, cols, channels)`` values of ``dtype``.
    """
    h, w = int(shape[0]), int(shape[1])
    y0, y1, _ = rows.indices(h)
    x0, x1, _ = cols.indices(w)
    y = (np.arange(y0, y1, dtype=np.float32) / np.float32(max(h - 1, 1)))[:, None]
    x = (np.arange(x0, x1, dtype=np.float32) / np.float32(max(w - 1, 1)))[None, :]
    flat = (np.arange(y0, y1, dtype=np.uint64)[:, None] * np.uint64(w) + np.arange(x0, x1, dtype=np.uint64)[None, :])
    out = np.empty((y1 - y0, x1 - x0, channels), dtype=np.dtype(dtype))
    for c, p in enumerate(_image_params(channels, seed)):
        v = np.full((y1 - y0, x1 - x0), 0.5, dtype=np.float32)
        for k in range(4):  # smooth: separable waves (outer products, cheap)
            v += np.float32(p["amp"][k]) * (np.sin(p["fy"][k] * y + p["py"][k]) * np.sin(p["fx"][k] * x + p["px"][k])).astype(np.float32)
        # Detail: a ring pattern whose frequency grows away from its centre, and fine texture.
        r2 = (y - np.float32(p["centre"][0])) ** 2 + (x - np.float32(p["centre"][1])) ** 2
        v += np.float32(0.08) * np.sin(np.float32(p["ring"]) * r2 * np.float32(4.0))
        v += np.float32(0.04) * (np.sin(np.float32(p["ty"]) * y) * np.sin(np.float32(p["tx"]) * x))
        v += np.float32(0.06) * _hash_noise(flat * np.uint64(channels) + np.uint64(c), seed)
        out[..., c] = _to_dtype(v, dtype)
    return out


def make_image(shape: tuple[int, int], channels: int = 3, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """A generated image held in memory (use `write_tiled_tiff`/`make_image_store` for big ones).

    Parameters
    ----------
    shape
        ``(height, width)``.
    channels
        1 (gray), 3 (RGB) or 4 (RGBA), or any other count.
    dtype
        ``uint8``, ``uint16`` (full integer range) or ``float32`` (values in [0, 1]).
    seed
        Picks the waves and the noise.

    Returns
    -------
    ndarray
        ``(height, width, channels)`` of ``dtype`` (the channel axis is kept for gray).
    """
    return image_block(tuple(shape), slice(0, shape[0]), slice(0, shape[1]), channels=channels, dtype=dtype, seed=seed)


def write_tiled_tiff(
    path: str | os.PathLike,
    shape: tuple[int, int],
    channels: int = 3,
    dtype: str = "uint8",
    tile: tuple[int, int] = (512, 512),
    seed: int = 0,
    *,
    planar: bool = False,
    bigtiff: bool = True,
    compression: str | None = None,
) -> Path:
    """Write a generated image as a tiled (Big)TIFF, one tile at a time.

    Memory stays at one tile however large ``shape`` is. Edge tiles are zero-padded in
    the file, as TIFF requires; readers crop them to ``shape``.

    Parameters
    ----------
    path
        The file to write.
    shape
        ``(height, width)`` of the image.
    channels
        Samples per pixel: 1 is gray (MINISBLACK), 3 RGB, 4 RGBA (extra sample unassociated alpha).
    dtype
        ``uint8``, ``uint16`` or ``float32``.
    tile
        Tile ``(height, width)``; multiples of 16.
    seed
        As in `make_image`: the file holds ``make_image(shape, channels, dtype, seed)``.
    planar
        Store channels as separate planes (PlanarConfiguration 2) instead of interleaved.
    bigtiff
        Write BigTIFF (needed above 4 GiB).
    compression
        A tifffile compression name (e.g. ``"zlib"``), default none (fastest).

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    h, w = int(shape[0]), int(shape[1])
    th, tw = int(tile[0]), int(tile[1])

    def tiles() -> Iterator[np.ndarray]:
        planes = range(channels) if (planar and channels > 1) else (None,)
        for plane in planes:
            for y in range(0, h, th):
                for x in range(0, w, tw):
                    block = image_block((h, w), slice(y, min(y + th, h)), slice(x, min(x + tw, w)),
                                        channels=channels, dtype=dtype, seed=seed)
                    padded = np.zeros((th, tw, channels), dtype=block.dtype)
                    padded[: block.shape[0], : block.shape[1]] = block
                    if plane is not None:
                        yield np.ascontiguousarray(padded[..., plane])
                    elif channels == 1:
                        yield padded[..., 0]
                    else:
                        yield padded

    if channels == 1:
        full_shape, photometric, planarconfig, extra = (h, w), "minisblack", None, None
    elif planar:
        full_shape, planarconfig = (channels, h, w), "separate"
        photometric = "rgb" if channels in (3, 4) else "minisblack"
        extra = ["unassalpha"] if channels == 4 else None
    else:
        full_shape, planarconfig = (h, w, channels), "contig"
        photometric = "rgb" if channels in (3, 4) else "minisblack"
        extra = ["unassalpha"] if channels == 4 else None
    tifffile.imwrite(
        path,
        data=tiles(),
        shape=full_shape,
        dtype=np.dtype(dtype),
        tile=(th, tw),
        bigtiff=bigtiff,
        photometric=photometric,
        planarconfig=planarconfig,
        extrasamples=extra,
        compression=compression,
        metadata=None,
    )
    return Path(path)


def write_png(path: str | os.PathLike, values: np.ndarray) -> Path:
    """Write ``(h, w[, c])`` uint8/uint16 values as a PNG, 16-bit colour included.

    Pillow cannot *encode* 16-bit RGB/RGBA, so this writes the PNG chunks itself
    (filter type 0, zlib); gray and 8-bit images go through the same path.
    """
    import struct
    import zlib

    a = np.asarray(values)
    if a.ndim == 2:
        a = a[..., None]
    h, w, c = a.shape
    depth = {np.dtype("uint8"): 8, np.dtype("uint16"): 16}[a.dtype]
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = a.astype(">u2" if depth == 16 else "u1").reshape(h, -1).view(np.uint8).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    Path(path).write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    )
    return Path(path)


# -- audio ------------------------------------------------------------------------
def audio_block(start: int, n: int, *, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Samples ``[start, start + n)`` of the generated audio, float32 in [-1, 1], ``(n, channels)``.

    A mixture of steady tones, a repeating chirp (10 s sweep 100 Hz -> 4 kHz, capped
    below Nyquist), slow amplitude modulation and hashed noise; each channel has its own
    tones.
    """
    rng = np.random.default_rng(seed)
    t = (np.arange(start, start + n, dtype=np.float64) / sample_rate)
    out = np.empty((n, channels), dtype=np.float32)
    nyq = sample_rate / 2
    period = 10.0
    f0, f1 = 100.0, min(4000.0, 0.45 * nyq)
    tc = np.mod(t, period)
    chirp = np.sin(2 * np.pi * (f0 * tc + (f1 - f0) * tc**2 / (2 * period)))
    for c in range(channels):
        freqs = rng.uniform(110.0, min(2000.0, 0.4 * nyq), 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        v = 0.15 * chirp
        for f, p in zip(freqs, phases):
            v = v + 0.12 * np.sin(2 * np.pi * f * t + p)
        v = v * (0.75 + 0.25 * np.sin(2 * np.pi * 0.5 * t + c))
        v = v + 0.05 * _hash_noise(np.arange(start, start + n, dtype=np.uint64) * np.uint64(channels) + np.uint64(c), seed)
        out[:, c] = v
    return out


def make_audio(seconds: float, sample_rate: int = 16000, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Generated audio in memory: float32 ``(frames, channels)`` in [-1, 1] (as `write_audio` writes)."""
    return audio_block(0, int(round(seconds * sample_rate)), sample_rate=sample_rate, channels=channels, seed=seed)


def write_audio(
    path: str | os.PathLike,
    seconds: float,
    sample_rate: int = 16000,
    channels: int = 1,
    subtype: str = "PCM_16",
    seed: int = 0,
    *,
    format: str | None = None,
    block: int = 1 << 16,
) -> Path:
    """Write generated audio block by block with soundfile (memory: one block).

    Parameters
    ----------
    path
        Output file; the format follows its suffix (``.wav``, ``.flac``, ``.ogg``...)
        unless ``format`` is given.
    seconds, sample_rate, channels
        Length, rate and channel count.
    subtype
        A libsndfile subtype: ``PCM_16``, ``PCM_24``, ``FLOAT``, ``VORBIS``...
    seed
        As in `audio_block`; the file holds ``make_audio(seconds, sample_rate, channels, seed)``
        quantised to ``subtype``.
    block
        Frames generated and written per step.

    Returns
    -------
    Path
        ``path``.
    """
    import soundfile as sf

    frames = int(round(seconds * sample_rate))
    # RF64 for WAVs past 4 GiB, which plain RIFF cannot address.
    if format is None and Path(path).suffix.lower() == ".wav":
        bytes_per = {"PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}.get(subtype, 4)
        if frames * channels * bytes_per > 2**32 - 2**20:
            format = "RF64"
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=channels, subtype=subtype, format=format) as f:
        for s in range(0, frames, block):
            f.write(audio_block(s, min(block, frames - s), sample_rate=sample_rate, channels=channels, seed=seed))
    return Path(path)


# -- stores -----------------------------------------------------------------------
def make_image_store(
    path: str | os.PathLike,
    shape: tuple[int, int],
    chunks: tuple[int, int] | None = None,
    channels: int = 3,
    seed: int = 0,
    *,
    dtype: str = "uint8",
    overwrite: bool = False,
) -> Path:
    """Write a generated image straight into a complete signal store, shard by shard.

    Memory stays at one write block (a shard when sharded, else a chunk), so gigapixel
    stores for fit benchmarks can be made without the image ever existing in memory.
    The store holds ``make_image(shape, channels, dtype, seed)``.

    Parameters
    ----------
    path
        The store folder to create.
    shape
        ``(height, width)``.
    chunks
        Grid chunk shape (default: the image default, 1024).
    channels, seed, dtype
        As in `make_image`.
    overwrite
        Replace an existing store.

    Returns
    -------
    Path
        The store path.
    """
    from .store import create_store

    shape = (int(shape[0]), int(shape[1]))
    meta = {"generated": {"generator": "intstream.testing.image_block", "seed": int(seed)}}
    with create_store(path, kind="image", shape=shape, channels=channels, dtype=dtype, chunks=chunks,
                      meta=meta, overwrite=overwrite) as writer:
        for rows, cols in writer.blocks():
            writer.write((rows, cols), image_block(shape, rows, cols, channels=channels, dtype=dtype, seed=seed))
    return Path(path).absolute()


# -- meshes -----------------------------------------------------------------------
def make_sphere_mesh(radius: float = 0.5, subdivisions: int = 3, centre=(0.0, 0.0, 0.0)):
    """A watertight icosphere (trimesh), whose exact SDF is ``|p - centre| - radius``."""
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(np.asarray(centre, dtype=float))
    return mesh
