"""The one device resolver every stage uses (STYLE 14)."""

from __future__ import annotations

from .errors import InputError

__all__ = ["resolve_device"]


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; an unavailable cuda is an InputError."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, "--device cuda: no CUDA device is available")
    return device
