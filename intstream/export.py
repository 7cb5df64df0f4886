"""The weights file: one self-contained safetensors file per fitted signal (DESIGN §6).

Two layouts, both plain safetensors with one JSON string under metadata ``intstream``
(model config, the signal's store metadata: kind, shape, channels, dtype,
normalisation, value range, sample rate, SDF transform, source checksum; the training
summary; how each tensor is encoded; a sha256 of the tensor bytes):

**Version 1** (``float32``, ``float16``): the network's state dict, each tensor in its
stored precision. (Old int8 files, ``NAME`` int8 + ``NAME.scale`` float32 +
``NAME.zero_point`` int8 per output row, still load.)

**Version 2** (``int8`` ... ``int3``: quantised and entropy coded): exactly one tensor,
``payload`` (uint8), described by ``header["payload"]``::

    {"coder": "ans" | "zstd", "side_bytes": S, "stream_bytes": B,
     "tensors": [{"name", "shape", "enc", ...}, ...]}   # in payload order

``payload[:S]`` holds, entry after entry, the raw little-endian bytes of every
``float32``/``float16`` tensor and the float16 scales of every quantised one (one per
group: output row of a 2-D ``[out, in]`` matrix, or (tile, output unit) of an
``[..., in, out]`` tensor of 3 or more dimensions, i.e. the reduced axis is ``axis``).
``payload[S:S+B]`` is the symbol stream. A quantised entry (``enc`` ``"int{N}"``,
``axis``, ``lo``, ``hi``, ``mean``, ``std``) stores symbols ``v`` in ``[lo, hi]`` with
``w = scale * v``: per group the affine range ``[min(w, 0), max(w, 0)]`` maps onto
2^N levels (zero exact), ``v = q - zero_point``, so every group's symbols are centred
on 0 and share one distribution. Coders:

- ``ans`` (default): constriction's range-ANS stack coder, one entry after another,
  each with the discretised Gaussian ``QuantizedGaussian(lo, hi + 1, mean, std)`` (its
  two floats are the entry's whole model, so no histogram is stored);
- ``zstd``: the symbols as ``v - lo`` (uint8, or little-endian uint16 for ranges
  above 256) concatenated in entry order, compressed with Zstandard level 19.

Measured on fitted SIRENs (benchmarks/results/rd.md): ans lands within ~1.5% of the
tensors' empirical entropy and beats zstd and brotli; a categorical model with its
histogram stored costs more than it saves below ~50k weights per tensor.

Everything eval/decode needs is in the file, so the store may be gone. The file is
read with ``safetensors`` only: no pickle, no code runs on load, and `load_weights`
validates the metadata (types, sizes, nesting, payload layout) before using it.

Precision rules (why not "everything in the chosen dtype"):

- The SIREN's input layer (``layers.0``) and every buffer (Fourier frequencies) stay
  float32. Their errors are multiplied by ``omega0 * extent`` before the sine: with the
  paper's audio extent (5 for 2 s, 20 for 8 s) and omega0 = 30, float16 rounding alone
  (2^-11 relative) moves a phase by ~0.3 rad. They are a few hundred numbers.
- Integer dtypes quantise weight tensors of 2 or more dimensions per group (above);
  biases and other 1-D tensors are float16.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_output, check_output_path
from .errors import InputError
from .normalize import Normalisation

__all__ = [
    "WEIGHT_DTYPES",
    "Weights",
    "export_weights",
    "write_weights",
    "load_weights",
    "load_source",
    "quantize_rows",
    "dequantize_rows",
    "quantize",
    "dequantize",
    "INT_DTYPES",
    "CODERS",
]

INT_DTYPES = {f"int{b}": b for b in (8, 7, 6, 5, 4, 3)}
WEIGHT_DTYPES = ("float16", "float32", *INT_DTYPES)
CODERS = ("ans", "zstd")
FORMAT = "intstream-weights"
VERSION = 2
META_KEY = "intstream"
PAYLOAD = "payload"
# Load-time limits on the metadata: a weights file is untrusted input.
MAX_META_CHARS = 16 << 20
MAX_META_DEPTH = 12
MAX_META_NODES = 200_000
MAX_TENSOR_ELEMENTS = 1 << 34


@dataclass
class Weights:
    """A fitted network plus what it represents, from a weights file or a checkpoint.

    Attributes
    ----------
    path
        The weights file or checkpoint it came from.
    model_config
        `intstream.models.ModelConfig` as a dict.
    state
        Float32 state dict (int8/float16 tensors already dequantised).
    signal
        The store's ``intstream`` metadata at fit time (kind, shape, normalisation...).
    store_path
        Where the store was when the network was fitted (may no longer exist).
    run_dir
        The run directory, when known (its ``log.jsonl`` feeds the training plots).
    summary
        The training summary (steps, seconds, training PSNR, strategy).
    dtype
        Stored precision (``float32`` for a checkpoint).
    """

    path: Path
    model_config: dict
    state: dict
    signal: dict
    store_path: str | None = None
    run_dir: str | None = None
    summary: dict = field(default_factory=dict)
    dtype: str = "float32"
    header: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.signal["kind"]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.signal["shape"])

    @property
    def channels(self) -> int:
        return int(self.signal["channels"])

    @property
    def norm(self) -> Normalisation:
        return Normalisation.from_dict(self.signal["normalisation"])

    def model(self, device: str = "cpu"):
        """The network with these weights, in eval mode on ``device`` (float32)."""
        from .models import ModelConfig, build_model

        net = build_model(ModelConfig.from_dict(self.model_config))
        net.load_state_dict(self.state, strict=True)
        return net.to(device).eval()


# -- int8 ---------------------------------------------------------------------------


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-output-row affine int8 quantisation of a 2-D weight matrix.

    Each row's range is widened to include 0 (so zero stays exactly representable and
    the zero point fits int8), then mapped onto the 256 levels of int8.

    Returns
    -------
    (q, scale, zero_point)
        ``q`` int8 ``(rows, cols)``, ``scale`` float32 ``(rows,)``, ``zero_point`` int8
        ``(rows,)``; `dequantize_rows` inverts them to within ``scale / 2``.
    """
    w = np.asarray(w, dtype=np.float64)
    lo = np.minimum(w.min(axis=1), 0.0)
    hi = np.maximum(w.max(axis=1), 0.0)
    scale = (hi - lo) / 255.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    s = scale.astype(np.float64)[:, None]
    zero = np.clip(np.rint(-128.0 - lo / s[:, 0]), -128, 127)
    q = np.clip(np.rint(w / s) + zero[:, None], -128, 127).astype(np.int8)
    return q, scale, zero.astype(np.int8)


def dequantize_rows(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Float32 weights from `quantize_rows`' output."""
    return ((q.astype(np.float32) - zero_point.astype(np.float32)[:, None]) * scale.astype(np.float32)[:, None])


# -- int-N, entropy coded (version 2) -------------------------------------------------


def group_axis(ndim: int) -> int:
    """The axis reduced by one quantisation group: ``in`` of ``[out, in]`` or ``[..., in, out]``."""
    return -1 if ndim == 2 else -2


def _fp16_ceil(s: np.ndarray) -> np.ndarray:
    """Float16 values >= ``s`` (so a group's range still fits its levels after rounding)."""
    h = s.astype(np.float16)
    low = h.astype(np.float64) < s
    h[low] = np.nextafter(h[low], np.float16(np.inf))
    return h


def quantize(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Affine int-``bits`` quantisation per group (see `group_axis`) with float16 scales.

    Each group's range is widened to include 0, split into ``2**bits - 1`` steps of
    ``scale`` (rounded up to float16), and each weight becomes the signed step count
    ``v = round(w / scale)``, clipped to the group's ``2**bits`` levels. ``w ≈ scale * v``
    within ``scale / 2``; ``v`` is centred on 0 in every group (``v = q - zero_point``).

    Returns
    -------
    (v, scale)
        ``v`` int32 of ``w``'s shape; ``scale`` float16 with ``w``'s shape minus the
        reduced axis, flattened in C order.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim < 2:
        raise ValueError("quantize takes tensors of 2 or more dimensions")
    axis = group_axis(w.ndim)
    rows = np.moveaxis(w, axis, -1).reshape(-1, w.shape[axis])
    levels = (1 << bits) - 1
    lo = np.minimum(rows.min(axis=1), 0.0)
    hi = np.maximum(rows.max(axis=1), 0.0)
    step = (hi - lo) / levels
    scale = _fp16_ceil(np.where(step > 0, step, 1.0))
    if not np.isfinite(scale).all():
        raise ValueError(f"weights up to {np.abs(rows).max():.3g} are out of float16 scale range")
    s = scale.astype(np.float64)[:, None]
    zero = np.clip(np.rint(-lo / s[:, 0]), 0, levels)[:, None]
    v = np.clip(np.rint(rows / s), -zero, levels - zero).astype(np.int32)
    moved = list(np.moveaxis(np.empty(w.shape, dtype=np.int8), axis, -1).shape)
    return np.moveaxis(v.reshape(moved), -1, axis), scale


def dequantize(v: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Float32 weights ``scale * v`` from `quantize`'s output (exact in float32)."""
    axis = group_axis(v.ndim)
    moved = np.moveaxis(v, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1]).astype(np.float32) * scale.astype(np.float32)[:, None]
    return np.ascontiguousarray(np.moveaxis(rows.reshape(moved.shape), -1, axis))


# Groups shorter than this stay float16: a 2-byte scale per few weights saves nothing
# (the tiled model's first layer, [n_tiles, in_dim, width], has groups of in_dim).
MIN_GROUP = 8


def is_quantised(name: str, shape, keep_fp32=frozenset()) -> bool:
    """Whether an integer dtype quantises this tensor (else float16, or float32 if kept)."""
    return (name not in keep_fp32 and len(shape) >= 2 and math.prod(shape) > 0
            and shape[group_axis(len(shape))] >= MIN_GROUP)


def _n_groups(shape) -> int:
    return math.prod(shape) // shape[group_axis(len(shape))]


def _gaussian(entry: dict):
    import constriction

    return constriction.stream.model.QuantizedGaussian(entry["lo"], entry["hi"] + 1, entry["mean"], entry["std"])


def _code_symbols(coder: str, entries: list[dict], symbols: list[np.ndarray]) -> bytes:
    """The symbol stream of ``entries`` (each ``lo < hi``; constant ones carry no symbols)."""
    coded = [(e, v) for e, v in zip(entries, symbols) if e["hi"] > e["lo"]]
    if coder == "ans":
        import constriction

        enc = constriction.stream.stack.AnsCoder()
        for e, v in reversed(coded):  # a stack: the last entry in is the first one out
            enc.encode_reverse(np.ascontiguousarray(v.ravel(), dtype=np.int32), _gaussian(e))
        return enc.get_compressed().astype("<u4").tobytes()
    from numcodecs import Zstd

    raw = b"".join(((v.ravel() - e["lo"]).astype(_offset_dtype(e))).tobytes() for e, v in coded)
    return bytes(Zstd(level=19).encode(raw)) if raw else b""


def _offset_dtype(e: dict) -> str:
    return "u1" if e["hi"] - e["lo"] < 256 else "<u2"


def _decode_symbols(coder: str, entries: list[dict], stream: bytes, path: Path) -> list[np.ndarray]:
    """Inverse of `_code_symbols`; any inconsistency is an `InputError` naming ``path``."""
    out = []
    if coder == "ans":
        import constriction

        if len(stream) % 4:
            raise InputError(path, "corrupt weights payload (ANS stream is not whole 32-bit words)")
        dec = constriction.stream.stack.AnsCoder(np.frombuffer(stream, dtype="<u4").astype(np.uint32))
        for e in entries:
            n = math.prod(e["shape"])
            if e["hi"] == e["lo"]:
                out.append(np.full(n, e["lo"], dtype=np.int32))
                continue
            try:
                out.append(np.asarray(dec.decode(_gaussian(e), n), dtype=np.int32))
            except Exception as exc:  # constriction raises its own types on a broken stream
                raise InputError(path, f"corrupt weights payload ({exc.__class__.__name__} decoding {e['name']!r})") from None
        if not dec.is_empty():
            raise InputError(path, "corrupt weights payload (ANS stream has bytes left over)")
    else:
        from numcodecs import Zstd

        try:
            raw = bytes(Zstd().decode(stream)) if stream else b""
        except Exception as exc:
            raise InputError(path, f"corrupt weights payload (zstd: {str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__})") from None
        pos = 0
        for e in entries:
            n = math.prod(e["shape"])
            if e["hi"] == e["lo"]:
                out.append(np.full(n, e["lo"], dtype=np.int32))
                continue
            dt = np.dtype(_offset_dtype(e))
            chunk = raw[pos : pos + n * dt.itemsize]
            if len(chunk) != n * dt.itemsize:
                raise InputError(path, f"corrupt weights payload (symbols of {e['name']!r} cut short)")
            out.append(np.frombuffer(chunk, dtype=dt).astype(np.int32) + e["lo"])
            pos += n * dt.itemsize
        if pos != len(raw):
            raise InputError(path, "corrupt weights payload (zstd stream has bytes left over)")
    for e, v in zip(entries, out):
        if v.size and (v.min() < e["lo"] or v.max() > e["hi"]):
            raise InputError(path, f"corrupt weights payload (symbols of {e['name']!r} outside [{e['lo']}, {e['hi']}])")
    return out


def _encode_coded(state: dict, *, bits: int, coder: str, keep_fp32: set[str]) -> tuple[bytes, dict, dict]:
    """State dict -> (payload bytes, payload header, per-name encoding) for version 2."""
    import torch

    side, entries, symbols, encoding = [], [], [], {}
    for name, t in state.items():
        a = t.detach().to("cpu", torch.float32).contiguous().numpy()
        entry = {"name": name, "shape": list(a.shape)}
        if name in keep_fp32:
            entry["enc"] = "float32"
            side.append(a.astype("<f4").tobytes())
        elif is_quantised(name, a.shape, keep_fp32):
            v, scale = quantize(a, bits)
            entry.update(enc=f"int{bits}", axis=group_axis(a.ndim), lo=int(v.min()), hi=int(v.max()),
                         # 3 digits: the model needs no more, and the header stays short
                         mean=float(f"{v.mean():.3g}"), std=max(float(f"{v.std():.3g}"), 0.5))
            side.append(scale.astype("<f2").tobytes())
            symbols.append(v)
            entries.append(entry)
            encoding[name] = _encoding_name(f"int{bits}")
            continue
        else:
            entry["enc"] = "float16"
            side.append(a.astype("<f2").tobytes())
        encoding[name] = entry["enc"]
        entries.append(entry)
    q_entries = [e for e in entries if e["enc"].startswith("int")]
    stream = _code_symbols(coder, q_entries, symbols)
    side_bytes = b"".join(side)
    header = {"coder": coder, "side_bytes": len(side_bytes), "stream_bytes": len(stream), "tensors": entries}
    return side_bytes + stream, header, encoding


def _decode_coded(payload: bytes, header: dict, path: Path) -> dict:
    """Version 2 payload -> float32 state dict (``header`` already validated)."""
    import torch

    side, stream = payload[: header["side_bytes"]], payload[header["side_bytes"] :]
    entries = header["tensors"]
    q_entries = [e for e in entries if e["enc"].startswith("int")]
    symbols = iter(_decode_symbols(header["coder"], q_entries, stream, path))
    state, pos = {}, 0
    for e in entries:
        shape = tuple(e["shape"])
        if e["enc"].startswith("int"):
            n = _n_groups(shape)
            scale = np.frombuffer(side[pos : pos + 2 * n], dtype="<f2")
            pos += 2 * n
            if not np.isfinite(scale).all():
                raise InputError(path, f"corrupt weights payload (non-finite scale in {e['name']!r})")
            w = dequantize(next(symbols).reshape(shape), scale)
        else:
            dt = np.dtype("<f4" if e["enc"] == "float32" else "<f2")
            n = math.prod(shape) * dt.itemsize
            w = np.frombuffer(side[pos : pos + n], dtype=dt).astype(np.float32).reshape(shape)
            pos += n
        state[e["name"]] = torch.from_numpy(np.array(w, dtype=np.float32))
    return state


def _encode(state: dict, *, dtype: str, keep_fp32: set[str]) -> tuple[dict, dict]:
    """State dict (float32 torch tensors) -> (tensors to store, per-name encoding)."""
    import torch

    tensors, encoding = {}, {}
    for name, t in state.items():
        t = t.detach().to("cpu", torch.float32).contiguous()
        if name in keep_fp32 or dtype == "float32":
            tensors[name], encoding[name] = t, "float32"
        elif dtype == "int8" and t.ndim == 2:
            q, scale, zero = quantize_rows(t.numpy())
            tensors[name] = torch.from_numpy(q)
            tensors[f"{name}.scale"] = torch.from_numpy(scale)
            tensors[f"{name}.zero_point"] = torch.from_numpy(zero)
            encoding[name] = "int8-row-affine"
        else:
            tensors[name], encoding[name] = t.to(torch.float16), "float16"
    return tensors, encoding


def _decode(tensors: dict, encoding: dict, path: Path) -> dict:
    import torch

    state = {}
    for name, enc in encoding.items():
        try:
            if enc == "int8-row-affine":
                w = dequantize_rows(
                    tensors[name].numpy(), tensors[f"{name}.scale"].numpy(), tensors[f"{name}.zero_point"].numpy()
                )
                state[name] = torch.from_numpy(w)
            elif enc in ("float16", "float32"):
                state[name] = tensors[name].to(torch.float32)
            else:
                raise InputError(path, f"tensor {name!r} has an unknown encoding {enc!r}")
        except KeyError as exc:
            raise InputError(path, f"weights file lacks tensor {exc.args[0]!r}") from None
    return state


def _digest(tensors: dict) -> str:
    """sha256 over the stored tensor bytes in name order (safetensors has no checksum)."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# -- write --------------------------------------------------------------------------


def _keep_fp32(model, cfg) -> set[str]:
    names = {name for name, _ in model.named_buffers()}
    # A tiled bank's first layer sees local coordinates in [-1, 1] (float16 is fine there).
    if cfg.arch == "siren" and getattr(cfg, "model", "single") != "tiled":
        names |= {"layers.0.weight", "layers.0.bias"}
    return names


def write_weights(
    path: str | os.PathLike,
    state: dict,
    header: dict,
    *,
    dtype: str = "float16",
    keep_fp32: set[str] = frozenset(),
    coder: str = "ans",
) -> Path:
    """Encode ``state`` at ``dtype`` and write it with ``header`` as one safetensors file.

    ``header`` is completed with the format tag, dtype, per-tensor encoding and the
    tensor digest (and, for integer dtypes, the payload layout; ``coder`` picks the
    entropy coder). The file appears atomically. Returns the path.
    """
    blob = encode_weights(state, header, dtype=dtype, keep_fp32=keep_fp32, coder=coder)
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def encode_weights(state: dict, header: dict, *, dtype: str = "float16", keep_fp32: set[str] = frozenset(),
                   coder: str = "ans") -> bytes:
    """The bytes of the weights file `write_weights` writes (to size a file without writing it)."""
    import torch
    from safetensors.torch import save

    if dtype not in WEIGHT_DTYPES:
        raise InputError(None, f"unknown weights dtype {dtype!r} (expected one of {', '.join(WEIGHT_DTYPES)})")
    if coder not in CODERS:
        raise InputError(None, f"unknown coder {coder!r} (expected one of {', '.join(CODERS)})")
    if dtype in INT_DTYPES:
        try:
            payload, layout, encoding = _encode_coded(state, bits=INT_DTYPES[dtype], coder=coder,
                                                      keep_fp32=set(keep_fp32))
        except ValueError as exc:
            raise InputError(None, f"cannot quantise to {dtype}: {exc}") from None
        # Every byte counts at low rates: the fit config (in the run dir) stays out, and
        # the per-tensor encoding is implied by the payload entries (restored on load).
        full = {"format": FORMAT, "version": 2, **{k: v for k, v in header.items() if k != "fit_config"},
                "dtype": dtype, "payload": layout}
        packed = zlib.compress(json.dumps(full, default=str, separators=(",", ":")).encode(), 9)
        tensors = {PAYLOAD: torch.frombuffer(bytearray(packed + payload), dtype=torch.uint8)}
        plain = {"format": FORMAT, "version": 2, "dtype": dtype, "header_bytes": len(packed),
                 "tensors_sha256": _digest(tensors)}
        return save(tensors, metadata={META_KEY: json.dumps(plain, separators=(",", ":")), "format": "pt"})
    tensors, encoding = _encode(state, dtype=dtype, keep_fp32=set(keep_fp32))
    extra, version = {}, 1
    header = {
        "format": FORMAT,
        "version": version,
        **header,
        "dtype": dtype,
        "encoding": encoding,
        **extra,
        "tensors_sha256": _digest(tensors),
    }
    meta = json.dumps(header, default=str, separators=(",", ":"))
    return save(tensors, metadata={META_KEY: meta, "format": "pt"})


def _open_checkpoint(ck_path: Path, *, need: tuple[str, ...]) -> tuple[dict, dict, Path | None]:
    """Load ``ck_path`` and check what a weights file is made from.

    Returns the checkpoint, its signal's store metadata (which must hold the keys
    ``need``) and the run directory (``None`` for a checkpoint file not named
    `CHECKPOINT_NAME`, i.e. not a run's own).
    """
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint

    ck = load_checkpoint(ck_path)
    for key in ("model_config", "model", "store"):
        if key not in ck:
            raise InputError(ck_path, f"checkpoint has no {key!r} entry")
    signal = dict(ck["store"].get("meta") or {})
    if any(key not in signal for key in need):
        raise InputError(ck_path, f"checkpoint's store metadata lacks the {' or '.join(need)}")
    run_dir = ck_path.parent if ck_path.name == CHECKPOINT_NAME else None
    return ck, signal, run_dir


def export_weights(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dtype: str | None = None,
    coder: str = "ans",
    overwrite: bool = False,
    finetune: int = 0,
    finetune_lr: float | None = None,
    bits_per_sample: float | None = None,
    device: str = "cpu",
) -> dict:
    """Write the weights of a run (run dir or checkpoint) as one self-contained file.

    Parameters
    ----------
    source
        A run directory or its ``checkpoint.pt``.
    output
        The ``.safetensors`` file to write.
    dtype
        ``float16`` (the default without a rate target), ``float32``, or ``int8`` ...
        ``int3`` (per-group affine, entropy coded); ``None`` with a rate target picks
        the widest integer dtype whose file fits it.
    coder
        Entropy coder of integer dtypes: ``ans`` (default) or ``zstd``.
    overwrite
        Replace an existing ``output``.
    finetune
        Steps of quantisation-aware fine-tuning (`intstream.qat`) before an integer
        export; needs the run's store.
    finetune_lr
        Its learning rate (default: `intstream.qat.finetune`'s).
    bits_per_sample
        Target file size in bits per grid sample (``bpp`` for images); default: the
        target ``fit --bpp/--kbps/--bits-per-sample`` recorded in the run directory.
    device
        Where fine-tuning runs.

    Returns
    -------
    dict
        The manifest: weights path, dtype, coder, bytes, params, raw signal bytes,
        compression ratio (raw bytes / file bytes), the source file's bytes and the
        ratio against them, bits per sample (an image's bpp: one name across stages), the rate target
        and whether it was met, the fine-tuning figures, kind, shape, store, run dir,
        training summary, seconds.
    """
    from .checkpoint import find_checkpoint
    from .models import ModelConfig, build_model, count_params

    t0 = time.perf_counter()
    if dtype is not None and dtype not in WEIGHT_DTYPES:
        raise InputError(None, f"unknown --dtype {dtype!r} (expected one of {', '.join(WEIGHT_DTYPES)})")
    if coder not in CODERS:
        raise InputError(None, f"unknown --coder {coder!r} (expected one of {', '.join(CODERS)})")
    if bits_per_sample is not None and not (math.isfinite(bits_per_sample) and bits_per_sample > 0):
        raise InputError(None, f"rate target must be a positive number of bits per sample (got {bits_per_sample})")
    ck_path = find_checkpoint(source).absolute()
    out = check_output_path(output, overwrite=overwrite, inputs=(ck_path,))
    ck, signal, run_dir = _open_checkpoint(ck_path, need=("kind", "normalisation"))
    try:
        cfg = ModelConfig.from_dict(dict(ck["model_config"]))
        model = build_model(cfg)
        model.load_state_dict(ck["model"], strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise InputError(ck_path, f"model weights do not match the recorded architecture ({str(exc).splitlines()[0]})") from None
    shape = [int(n) for n in signal["shape"]]
    n_samples = math.prod(shape)
    target = bits_per_sample
    if target is None and run_dir is not None and dtype is None:
        from .rate import read_target

        target = read_target(run_dir)
    if dtype is None:
        dtype = "float16" if target is None else None
    if finetune and dtype is not None and dtype not in INT_DTYPES:
        raise InputError(None, f"--finetune trains for an integer dtype, not {dtype}")
    header = {
        "model_config": cfg.to_dict(),
        "signal": signal,
        "store": ck["store"].get("path"),
        "run_dir": None if run_dir is None else str(run_dir),
        "checkpoint": str(ck_path),
        "summary": dict(ck.get("summary") or {}),
        "fit_config": dict(ck.get("fit_config") or {}),
        "intstream_version": _version(),
    }
    keep = _keep_fp32(model, cfg)
    target_bytes = None if target is None else target * n_samples / 8

    def encoded(dt: str) -> bytes:
        return encode_weights(model.state_dict(), header, dtype=dt, keep_fp32=keep, coder=coder)

    def pick() -> tuple[str, bytes]:
        """The widest integer dtype whose file fits the target (the narrowest if none does)."""
        blob = None
        for dt in INT_DTYPES:  # widest first
            blob = encoded(dt)
            if len(blob) <= target_bytes:
                return dt, blob
        return dt, blob

    tuned = None
    if dtype is None:
        dtype, blob = pick()
    else:
        blob = None
    if finetune:
        from .qat import finetune as qat_finetune
        from .store import open_store

        if not ck["store"].get("path"):
            raise InputError(ck_path, "--finetune needs the run's store, and the checkpoint records none")
        try:
            store = open_store(ck["store"]["path"])
        except InputError as exc:
            raise InputError(exc.path, f"--finetune needs the run's store: {exc.problem}") from None
        from .device import resolve_device

        tuned = qat_finetune(model, store, bits=INT_DTYPES[dtype], steps=int(finetune), keep_fp32=keep,
                             lr=finetune_lr, device=str(resolve_device(device)), seed=int((header["fit_config"] or {}).get("seed") or 0))
        model.to("cpu")
        header["qat"] = {k: tuned[k] for k in ("steps", "bits", "lr", "batch")}
        blob = None
        if target is not None and len(encoded(dtype)) > target_bytes:
            dtype, blob = pick()  # fine-tuning moved the weights past the target: one width less
    if blob is None:
        blob = encoded(dtype)
    with atomic_output(out, overwrite=overwrite) as tmp:  # no clobbering at the rename
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    nbytes = out.stat().st_size
    raw = n_samples * int(signal["channels"]) * np.dtype(signal["dtype"]).itemsize
    source_bytes = (signal.get("source") or {}).get("size")
    manifest = {
        "stage": "export-weights",
        "weights": str(out),
        "dtype": dtype,
        "coder": coder if dtype in INT_DTYPES else None,
        "bytes": nbytes,
        "params": count_params(model),
        "raw_bytes": raw,
        "compression_ratio": round(raw / nbytes, 4),
        "source_bytes": source_bytes,
        "source_ratio": round(source_bytes / nbytes, 4) if source_bytes else None,
        "bits_per_sample": round(8 * nbytes / n_samples, 6),
    }
    if target is not None:
        manifest["target"] = {"bits_per_sample": target, "bytes": round(target_bytes),
                              "met": nbytes <= target_bytes, "relative": round(nbytes / target_bytes, 4)}
    if tuned is not None:
        manifest["finetune"] = tuned
    manifest.update({
        "kind": signal["kind"],
        "shape": shape,
        "channels": int(signal["channels"]),
        "store": header["store"],
        "run_dir": header["run_dir"],
        "checkpoint": str(ck_path),
        "summary": header["summary"],
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return manifest


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("intstream")
    except Exception:
        return "unknown"


# -- read ---------------------------------------------------------------------------


def load_weights(path: str | os.PathLike) -> Weights:
    """Read a weights file (safetensors, no pickle) and dequantise it to float32.

    Raises `InputError` naming the file for a missing, truncated, corrupted or foreign
    file, and for metadata that is incomplete, mistyped, absurdly large or nested, or
    that does not describe the tensors it came with.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path).absolute()
    if not p.is_file():
        raise InputError(p, "no such weights file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(p, f"corrupt or truncated weights file ({str(exc).splitlines()[0]})") from None
    if META_KEY not in meta:
        raise InputError(p, "not an intstream weights file (no 'intstream' metadata)")
    header = _parse_json(p, meta[META_KEY])
    version = header.get("version")
    if not _is_int(version) or version < 1:
        raise _bad(p, f"'version' must be a positive integer (got {_short(version)})")
    if version > VERSION:
        raise InputError(p, f"weights format {version} is newer than this intstream ({VERSION})")
    if not isinstance(header.get("tensors_sha256"), str):
        raise InputError(p, "weights metadata lacks 'tensors_sha256'")
    if _digest(tensors) != header["tensors_sha256"]:
        raise InputError(p, "corrupt weights file (tensor checksum mismatch)")
    if version >= 2:
        payload = tensors.get(PAYLOAD)
        if set(tensors) != {PAYLOAD} or payload.dtype.itemsize != 1 or payload.ndim != 1:
            raise InputError(p, "weights file holds other tensors than its one uint8 'payload'")
        payload = payload.numpy().tobytes()
        header = _unpack_header(p, header, payload)
        _check_header(p, header)
        body = payload[header["header_bytes"]:]
        _check_payload(p, header, len(body))
        state = _decode_coded(body, header["payload"], p)
    else:
        _check_header(p, header)
        state = _decode(tensors, header["encoding"], p)
    _check_state(p, header["model_config"], state)
    return Weights(
        path=p,
        model_config=header["model_config"],
        state=state,
        signal=header["signal"],
        store_path=header.get("store"),
        run_dir=header.get("run_dir"),
        summary=header.get("summary") or {},
        dtype=header["dtype"],
        header=header,
    )


# -- metadata validation ------------------------------------------------------------


def _bad(p: Path, what: str):
    return InputError(p, f"invalid weights metadata: {what}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _check_tree(p: Path, obj) -> None:
    """Refuse nesting deeper than MAX_META_DEPTH or more than MAX_META_NODES values."""
    stack, nodes = [(obj, 0)], 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_META_DEPTH:
            raise _bad(p, f"nested deeper than {MAX_META_DEPTH} levels")
        if nodes > MAX_META_NODES:
            raise _bad(p, f"more than {MAX_META_NODES} values")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _check_shape(p: Path, shape, what: str, *, min_len: int = 1, max_len: int = 8, zero_ok: bool = False) -> None:
    if (not isinstance(shape, list) or not min_len <= len(shape) <= max_len
            or not all(_is_int(n) and (n >= 0 if zero_ok else n >= 1) for n in shape)):
        raise _bad(p, f"{what} must be a list of {min_len}-{max_len} positive integers (got {_short(shape)})")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS:
        raise _bad(p, f"{what} {shape} is absurdly large")


def _short(x) -> str:
    r = json.dumps(x, default=str)
    return r if len(r) <= 60 else r[:57] + "..."


def _parse_json(p: Path, text) -> dict:
    """A metadata JSON string -> a dict tagged with our format, within the size and nesting limits."""
    if not isinstance(text, (str, bytes)) or len(text) > MAX_META_CHARS:
        raise _bad(p, f"metadata larger than {MAX_META_CHARS >> 20} MiB")
    try:
        header = json.loads(text)
    except RecursionError:
        raise _bad(p, f"nested deeper than {MAX_META_DEPTH} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(p, "corrupt weights metadata (not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InputError(p, "not an intstream weights file")
    _check_tree(p, header)
    return header


def _unpack_header(p: Path, plain: dict, payload: bytes) -> dict:
    """Version 2: the full header is zlib-compressed JSON at the start of the payload."""
    n = plain.get("header_bytes")
    if not _is_int(n) or not 0 < n <= len(payload):
        raise _bad(p, f"'header_bytes' must be an integer in 1..{len(payload)} (got {_short(n)})")
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(payload[:n], MAX_META_CHARS + 1)
        if inflate.unconsumed_tail or not inflate.eof:
            raise zlib.error("truncated or oversized")
    except zlib.error as exc:
        raise InputError(p, f"corrupt weights metadata (compressed header: {exc})") from None
    header = _parse_json(p, text)
    for key in ("version", "dtype"):
        if header.get(key) != plain.get(key):
            raise _bad(p, f"{key!r} differs between the plain and the packed header")
    header["tensors_sha256"] = plain["tensors_sha256"]
    header["header_bytes"] = n
    entries = (header.get("payload") or {}).get("tensors") if isinstance(header.get("payload"), dict) else None
    if "encoding" not in header and isinstance(entries, list):
        header["encoding"] = {e["name"]: _encoding_name(e.get("enc")) for e in entries
                              if isinstance(e, dict) and isinstance(e.get("name"), str)}
    return header


def _encoding_name(enc) -> str:
    """A payload entry's ``enc`` -> the per-tensor encoding name in ``header["encoding"]``."""
    if isinstance(enc, str) and enc in INT_DTYPES:
        return f"{enc}-row-affine" if enc == "int8" else f"{enc}-group-affine"
    return str(enc)


def _check_header(p: Path, header: dict) -> None:
    """Every header field eval/decode uses is present and sound (InputError otherwise)."""
    from .evaluate import METRICS  # the kinds eval knows

    version = header["version"]
    for key, typ in (("model_config", dict), ("signal", dict), ("encoding", dict), ("tensors_sha256", str)):
        if key not in header:
            raise InputError(p, f"weights metadata lacks {key!r}")
        if not isinstance(header[key], typ):
            raise _bad(p, f"{key!r} must be a {typ.__name__} (got {type(header[key]).__name__})")
    header.setdefault("dtype", "float32")
    if header["dtype"] not in WEIGHT_DTYPES:
        raise _bad(p, f"unknown dtype {_short(header['dtype'])}")
    if (version >= 2) != (header["dtype"] in INT_DTYPES):
        raise _bad(p, f"dtype {header['dtype']} does not belong in a version {version} file")
    for key in ("store", "run_dir"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise _bad(p, f"{key!r} must be a path string")
    if header.get("summary") is not None and not isinstance(header["summary"], dict):
        raise _bad(p, "'summary' must be an object")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in header["encoding"].items()):
        raise _bad(p, "'encoding' must map tensor names to strings")
    sig = header["signal"]
    if sig.get("kind") not in METRICS:
        raise _bad(p, f"signal kind must be one of {', '.join(METRICS)} (got {_short(sig.get('kind'))})")
    _check_shape(p, sig.get("shape"), "signal shape", max_len=4)
    if not _is_int(sig.get("channels")) or not 1 <= sig["channels"] <= 65536:
        raise _bad(p, f"signal channels must be an integer in 1..65536 (got {_short(sig.get('channels'))})")
    try:
        np.dtype(sig.get("dtype"))
        if not isinstance(sig.get("dtype"), str) or np.dtype(sig["dtype"]).kind not in "uif":
            raise TypeError
    except TypeError:
        raise _bad(p, f"signal dtype must name a numeric dtype (got {_short(sig.get('dtype'))})") from None
    norm = sig.get("normalisation")
    if not isinstance(norm, dict):
        raise InputError(p, "weights metadata lacks the signal's 'normalisation'")
    if not (_is_num(norm.get("offset")) and _is_num(norm.get("scale")) and norm["scale"] != 0
            and isinstance(norm.get("dtype"), str) and isinstance(norm.get("extent"), list)
            and len(norm["extent"]) == len(sig["shape"]) and all(_is_num(e) and e > 0 for e in norm["extent"])):
        raise _bad(p, f"signal normalisation must have finite offset, nonzero scale, a dtype and one positive "
                      f"extent per axis (got {_short(norm)})")
    if sig.get("sample_rate") is not None and not (_is_num(sig["sample_rate"]) and sig["sample_rate"] > 0):
        raise _bad(p, f"sample_rate must be a positive number (got {_short(sig['sample_rate'])})")
    if sig.get("source") is not None and not isinstance(sig["source"], dict):
        raise _bad(p, "signal 'source' must be an object")
    if sig.get("sdf") is not None and not isinstance(sig["sdf"], dict):
        raise _bad(p, "signal 'sdf' must be an object")
    if version >= 2:
        _check_layout(p, header)


def _check_layout(p: Path, header: dict) -> None:
    """The version-2 payload description: entries, encodings and byte counts agree."""
    lay = header.get("payload")
    if not isinstance(lay, dict):
        raise InputError(p, "weights metadata lacks its 'payload' layout")
    if lay.get("coder") not in CODERS:
        raise _bad(p, f"payload coder must be one of {', '.join(CODERS)} (got {_short(lay.get('coder'))})")
    for key in ("side_bytes", "stream_bytes"):
        if not _is_int(lay.get(key)) or lay[key] < 0:
            raise _bad(p, f"payload {key!r} must be a non-negative integer")
    entries = lay.get("tensors")
    if not isinstance(entries, list) or not entries:
        raise _bad(p, "payload 'tensors' must be a non-empty list")
    side, names = 0, set()
    for e in entries:
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise _bad(p, f"payload entry must be an object with a 'name' (got {_short(e)})")
        name = e["name"]
        if name in names:
            raise _bad(p, f"tensor {name!r} appears twice in the payload")
        names.add(name)
        _check_shape(p, e.get("shape"), f"shape of {name!r}", min_len=0, zero_ok=True)
        enc, shape = e.get("enc"), e["shape"]
        if enc in ("float16", "float32"):
            side += math.prod(shape) * (2 if enc == "float16" else 4)
        elif enc == header["dtype"]:
            if not is_quantised(name, shape):
                raise _bad(p, f"quantised tensor {name!r} needs 2 or more dimensions and groups of {MIN_GROUP}+")
            if e.get("axis") != group_axis(len(shape)):
                raise _bad(p, f"tensor {name!r}: quantisation axis must be {group_axis(len(shape))}")
            bits = INT_DTYPES[enc]
            lo, hi = e.get("lo"), e.get("hi")
            if not (_is_int(lo) and _is_int(hi) and -(1 << bits) < lo <= hi < (1 << bits)):
                raise _bad(p, f"tensor {name!r}: symbol range [{_short(lo)}, {_short(hi)}] does not fit {enc}")
            if not (_is_num(e.get("mean")) and _is_num(e.get("std")) and e["std"] > 0):
                raise _bad(p, f"tensor {name!r}: model needs a finite mean and a positive std")
            side += 2 * _n_groups(shape)
        else:
            raise _bad(p, f"tensor {name!r} has encoding {_short(enc)} in a {header['dtype']} file")
    if names != set(header["encoding"]):
        raise _bad(p, "payload tensors and 'encoding' name different tensors")
    if side != lay["side_bytes"]:
        raise _bad(p, f"payload side bytes {lay['side_bytes']} do not match its tensors ({side})")


def _check_payload(p: Path, header: dict, nbytes: int) -> None:
    lay = header["payload"]
    if lay["side_bytes"] + lay["stream_bytes"] != nbytes:
        raise InputError(p, f"corrupt weights payload ({nbytes} bytes, the metadata says "
                            f"{lay['side_bytes'] + lay['stream_bytes']})")


def _check_state(p: Path, model_config: dict, state: dict) -> None:
    """The recorded architecture builds, and exactly ``state``'s tensors fit it (no allocation)."""
    import torch

    from .models import ModelConfig, build_model

    for key, value in model_config.items():
        # Bounds before building: depth 10^9 would build a billion modules, even on "meta".
        if (_is_int(value) and not 0 <= value <= 1 << 24) or (isinstance(value, float) and not math.isfinite(value)) \
                or (key == "depth" and _is_int(value) and value > 1024):
            raise _bad(p, f"model_config {key} = {_short(value)} is out of range")
    try:
        cfg = ModelConfig.from_dict(dict(model_config))
        with torch.device("meta"):
            expect = {k: tuple(v.shape) for k, v in build_model(cfg).state_dict().items()}
    except (ValueError, TypeError, KeyError, OverflowError, RuntimeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise _bad(p, f"model_config does not build a network ({msg})") from None
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expect:
        missing, extra = sorted(set(expect) - set(got)), sorted(set(got) - set(expect))
        wrong = sorted(k for k in set(expect) & set(got) if expect[k] != got[k])
        detail = "; ".join(f"{what} {', '.join(names[:3])}" for what, names in
                           (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if names)
        raise InputError(p, f"weights do not fit the recorded architecture ({detail})")


def load_source(path: str | os.PathLike) -> Weights:
    """`Weights` from a weights file, a run directory or a checkpoint file."""
    from .checkpoint import find_checkpoint

    p = Path(path)
    if p.is_dir() or p.suffix == ".pt":
        ck_path = find_checkpoint(p).absolute()
        ck, signal, run_dir = _open_checkpoint(ck_path, need=("normalisation",))
        return Weights(
            path=ck_path,
            model_config=dict(ck["model_config"]),
            state={k: v.float() for k, v in ck["model"].items()},
            signal=signal,
            store_path=ck["store"].get("path"),
            run_dir=None if run_dir is None else str(run_dir),
            summary=dict(ck.get("summary") or {}),
            dtype="float32",
        )
    return load_weights(p)
