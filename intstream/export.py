"""The weights file: one self-contained safetensors file per fitted signal (DESIGN §6).

Layout::

    tensors   the network's state dict, each tensor in its stored precision; for int8,
              ``NAME`` (int8) plus ``NAME.scale`` (float32) and ``NAME.zero_point`` (int8)
              per output row: ``w = scale * (q - zero_point)``
    metadata  {"intstream": one JSON string} with the model config, the signal's store
              metadata (kind, shape, channels, dtype, normalisation, value range, sample
              rate, SDF transform, source checksum), the training summary, how each
              tensor is encoded and a sha256 of the tensor bytes

Everything eval/decode needs is in the file, so the store may be gone. The file is
read with ``safetensors`` only: no pickle, no code runs on load.

Precision rules (why not "everything in the chosen dtype"):

- The SIREN's input layer (``layers.0``) and every buffer (Fourier frequencies) stay
  float32. Their errors are multiplied by ``omega0 * extent`` before the sine: with the
  paper's audio extent (5 for 2 s, 20 for 8 s) and omega0 = 30, float16 rounding alone
  (2^-11 relative) moves a phase by ~0.3 rad. They are a few hundred numbers.
- int8 quantises 2-D weight matrices per output row; 1-D tensors (biases) are float16.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
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
]

WEIGHT_DTYPES = ("float16", "float32", "int8")
FORMAT = "intstream-weights"
VERSION = 1
META_KEY = "intstream"


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
    if cfg.arch == "siren":
        names |= {"layers.0.weight", "layers.0.bias"}
    return names


def write_weights(
    path: str | os.PathLike,
    state: dict,
    header: dict,
    *,
    dtype: str = "float16",
    keep_fp32: set[str] = frozenset(),
) -> Path:
    """Encode ``state`` at ``dtype`` and write it with ``header`` as one safetensors file.

    ``header`` is completed with the format tag, dtype, per-tensor encoding and the
    tensor digest. The file appears atomically. Returns the path.
    """
    from safetensors.torch import save

    if dtype not in WEIGHT_DTYPES:
        raise InputError(None, f"unknown weights dtype {dtype!r} (expected one of {', '.join(WEIGHT_DTYPES)})")
    tensors, encoding = _encode(state, dtype=dtype, keep_fp32=set(keep_fp32))
    header = {
        "format": FORMAT,
        "version": VERSION,
        **header,
        "dtype": dtype,
        "encoding": encoding,
        "tensors_sha256": _digest(tensors),
    }
    blob = save(tensors, metadata={META_KEY: json.dumps(header, default=str), "format": "pt"})
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
    return path


def export_weights(
    source: str | os.PathLike,
    output: str | os.PathLike,
    *,
    dtype: str = "float16",
    overwrite: bool = False,
) -> dict:
    """Write the weights of a run (run dir or checkpoint) as one self-contained file.

    Parameters
    ----------
    source
        A run directory or its ``checkpoint.pt``.
    output
        The ``.safetensors`` file to write.
    dtype
        ``float16`` (default), ``float32`` or ``int8`` (per-output-row affine).
    overwrite
        Replace an existing ``output``.

    Returns
    -------
    dict
        The manifest: weights path, dtype, bytes, params, raw signal bytes,
        compression ratio (raw bytes / file bytes), bits per sample (and ``bpp`` for
        images), kind, shape, store, run dir, training summary, seconds.
    """
    from .checkpoint import find_checkpoint, load_checkpoint
    from .models import ModelConfig, build_model, count_params

    t0 = time.perf_counter()
    if dtype not in WEIGHT_DTYPES:
        raise InputError(None, f"unknown --dtype {dtype!r} (expected one of {', '.join(WEIGHT_DTYPES)})")
    ck_path = find_checkpoint(source).absolute()
    out = check_output_path(output, overwrite=overwrite, inputs=(ck_path,))
    ck = load_checkpoint(ck_path)
    for key in ("model_config", "model", "store"):
        if key not in ck:
            raise InputError(ck_path, f"checkpoint has no {key!r} entry")
    try:
        cfg = ModelConfig.from_dict(dict(ck["model_config"]))
        model = build_model(cfg)
        model.load_state_dict(ck["model"], strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise InputError(ck_path, f"model weights do not match the recorded architecture ({str(exc).splitlines()[0]})") from None
    signal = dict(ck["store"].get("meta") or {})
    if "normalisation" not in signal or "kind" not in signal:
        raise InputError(ck_path, "checkpoint's store metadata lacks the kind or normalisation")
    run_dir = ck_path.parent if ck_path.name == "checkpoint.pt" else None
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
    write_weights(out, model.state_dict(), header, dtype=dtype, keep_fp32=_keep_fp32(model, cfg))
    nbytes = out.stat().st_size
    shape = [int(n) for n in signal["shape"]]
    n_samples = math.prod(shape)
    raw = n_samples * int(signal["channels"]) * np.dtype(signal["dtype"]).itemsize
    manifest = {
        "stage": "export-weights",
        "weights": str(out),
        "dtype": dtype,
        "bytes": nbytes,
        "params": count_params(model),
        "raw_bytes": raw,
        "compression_ratio": round(raw / nbytes, 4),
        "bits_per_sample": round(8 * nbytes / n_samples, 6),
    }
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
    file.
    """
    from safetensors import SafetensorError, safe_open

    p = Path(path).absolute()
    if not p.is_file():
        raise InputError(p, "no such weights file")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(p, f"corrupt or truncated weights file ({str(exc).splitlines()[0]})") from None
    if META_KEY not in meta:
        raise InputError(p, "not an intstream weights file (no 'intstream' metadata)")
    try:
        header = json.loads(meta[META_KEY])
    except json.JSONDecodeError:
        raise InputError(p, "corrupt weights metadata (not JSON)") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise InputError(p, "not an intstream weights file")
    if header.get("version", 0) > VERSION:
        raise InputError(p, f"weights format {header.get('version')} is newer than this intstream ({VERSION})")
    for key in ("model_config", "signal", "encoding", "tensors_sha256"):
        if key not in header:
            raise InputError(p, f"weights metadata lacks {key!r}")
    if _digest(tensors) != header["tensors_sha256"]:
        raise InputError(p, "corrupt weights file (tensor checksum mismatch)")
    return Weights(
        path=p,
        model_config=header["model_config"],
        state=_decode(tensors, header["encoding"], p),
        signal=header["signal"],
        store_path=header.get("store"),
        run_dir=header.get("run_dir"),
        summary=header.get("summary") or {},
        dtype=header.get("dtype", "float32"),
        header=header,
    )


def load_source(path: str | os.PathLike) -> Weights:
    """`Weights` from a weights file, a run directory or a checkpoint file."""
    from .checkpoint import find_checkpoint, load_checkpoint

    p = Path(path)
    if p.is_dir() or p.suffix == ".pt":
        ck_path = find_checkpoint(p).absolute()
        ck = load_checkpoint(ck_path)
        for key in ("model_config", "model", "store"):
            if key not in ck:
                raise InputError(ck_path, f"checkpoint has no {key!r} entry")
        signal = dict(ck["store"].get("meta") or {})
        if "normalisation" not in signal:
            raise InputError(ck_path, "checkpoint's store metadata lacks the normalisation")
        return Weights(
            path=ck_path,
            model_config=dict(ck["model_config"]),
            state={k: v.float() for k, v in ck["model"].items()},
            signal=signal,
            store_path=ck["store"].get("path"),
            run_dir=str(ck_path.parent) if ck_path.name == "checkpoint.pt" else None,
            summary=dict(ck.get("summary") or {}),
            dtype="float32",
        )
    return load_weights(p)
