"""Coordinate networks (DESIGN §7): the single SIREN and Fourier MLP of the paper."""

from .mlp import ARCHS, FourierMLP, ModelConfig, Siren, build_model, count_params, predict

__all__ = ["ARCHS", "ModelConfig", "Siren", "FourierMLP", "build_model", "count_params", "predict"]
