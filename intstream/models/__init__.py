"""Coordinate networks (DESIGN §7, §9): the single SIREN and Fourier MLP of the paper, and
the tiled SIREN bank. Imports are lazy so `intstream.models.sizing` stays torch-free."""

from __future__ import annotations

import importlib

__all__ = ["ARCHS", "MODELS", "ModelConfig", "Siren", "FourierMLP", "TiledSiren", "build_model", "count_params",
           "predict"]

_WHERE = {"TiledSiren": ".tiled"}


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(_WHERE.get(name, ".mlp"), __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
