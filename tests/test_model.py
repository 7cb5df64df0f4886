"""SIREN / Fourier MLP: the paper's initialisation on every layer, forward, fit, bf16 scoring."""

import math

import pytest
import torch

from intstream.models import FourierMLP, ModelConfig, Siren, build_model, count_params, predict


def test_config_roundtrip_and_unknown_keys():
    cfg = ModelConfig(in_dim=2, out_dim=3, width=64, depth=4)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.arch == "siren" and cfg.omega0 == 30.0
    with pytest.raises(ValueError, match="widht"):
        ModelConfig.from_dict({**cfg.to_dict(), "widht": 3})
    with pytest.raises(ValueError, match="arch"):
        ModelConfig(in_dim=2, out_dim=3, arch="mlp")
    with pytest.raises(ValueError, match="depth"):
        ModelConfig(in_dim=2, out_dim=3, depth=1)


def test_siren_init_bounds_every_layer():
    torch.manual_seed(0)
    in_dim, width, w0 = 2, 256, 30.0
    model = Siren(in_dim, 3, width=width, depth=6, omega0=w0)
    layers = list(model.layers)
    assert len(layers) == 6 and [l.out_features for l in layers] == [256] * 5 + [3]
    for i, layer in enumerate(layers):
        bound = 1.0 / in_dim if i == 0 else math.sqrt(6.0 / width) / w0
        for p in (layer.weight, layer.bias):
            assert p.abs().max() <= bound
            # Drawn uniformly over the whole range, not a narrower default init.
            assert p.abs().max() > 0.8 * bound
    # The last layer in particular is not PyTorch's default U(±1/sqrt(fan_in)) = ±0.0625.
    assert layers[-1].weight.abs().max() <= math.sqrt(6 / 256) / 30 + 1e-9


def test_forward_shape_and_determinism():
    cfg = ModelConfig(in_dim=3, out_dim=1, width=32, depth=4)
    torch.manual_seed(7)
    a = build_model(cfg)
    torch.manual_seed(7)
    b = build_model(cfg)
    x = torch.rand(100, 3) * 2 - 1
    ya = a(x)
    assert ya.shape == (100, 1)
    assert torch.equal(ya, b(x))
    assert count_params(a) == (3 * 32 + 32) + 2 * (32 * 32 + 32) + (32 + 1)


def test_grad_forward_equals_nograd_forward():
    # Training uses out-of-place sin (autograd needs the pre-activation); scoring in-place.
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=2, out_dim=3, width=32, depth=4))
    x = torch.rand(50, 2) * 2 - 1
    y = model(x)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    torch.testing.assert_close(predict(model, x), y.detach())


def test_siren_fits_1d_sine():
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=1, out_dim=1, width=64, depth=3))
    x = torch.linspace(-1, 1, 256)[:, None]
    y = torch.sin(3 * math.pi * x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(300):
        loss = torch.mean((model(x) - y) ** 2)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 100


def test_predict_batches_and_empty():
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=2, out_dim=3, width=32, depth=3))
    x = torch.rand(1000, 2) * 2 - 1
    with torch.no_grad():
        direct = model(x)
    torch.testing.assert_close(predict(model, x, batch=97), direct)
    assert predict(model, x[:0]).shape == (0, 3)
    assert not predict(model, x).requires_grad


def test_bf16_scoring_only_where_native(monkeypatch):
    """bf16 scoring where the device computes it natively; float32 where it is emulated
    (4-6x slower than float32 on an AVX2 CPU)."""
    from intstream.models import mlp

    native = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert mlp.bf16_native("cpu") is native
    assert mlp.scoring_dtype(None, "cpu") is None
    assert mlp.scoring_dtype(torch.bfloat16, "cpu") == (torch.bfloat16 if native else None)
    monkeypatch.setattr(mlp, "bf16_native", lambda device_type: False)
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=2, out_dim=3, width=32, depth=3))
    x = torch.rand(3000, 2) * 2 - 1
    torch.testing.assert_close(predict(model, x, dtype=torch.bfloat16), predict(model, x), rtol=0, atol=0)


def test_bf16_predict_close_to_fp32(bf16_scoring):
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_dim=2, out_dim=3))
    x = torch.rand(20000, 2) * 2 - 1
    ref = predict(model, x)
    low = predict(model, x, dtype=torch.bfloat16)
    assert low.dtype == torch.float32 and low.shape == ref.shape
    assert 0 < (low - ref).abs().max() < 0.05  # bf16 really ran, and stays close
    with pytest.raises(ValueError):
        predict(model, x, dtype=torch.float16)


def test_fourier_mlp(bf16_scoring):
    torch.manual_seed(0)
    cfg = ModelConfig(in_dim=2, out_dim=3, arch="fourier", width=32, depth=3, fourier_features=16)
    model = build_model(cfg)
    assert isinstance(model, FourierMLP)
    x = torch.rand(10, 2)
    assert model(x).shape == (10, 3)
    # The random frequencies travel in the state dict, so a rebuild is the same network.
    torch.manual_seed(1)
    other = build_model(cfg)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other(x), model(x))
    assert count_params(model) == (32 * 32 + 32) + (32 * 32 + 32) + (32 * 3 + 3)
    xs = torch.rand(5000, 2) * 2 - 1
    assert (predict(model, xs, dtype=torch.bfloat16) - predict(model, xs)).abs().max() < 0.05


def test_first_omega0_scales_only_the_first_layer():
    """``first_omega0`` (SIREN's audio setting) multiplies the first layer's pre-activation only."""
    import torch

    from intstream.models import ModelConfig, build_model

    cfg = ModelConfig(in_dim=1, out_dim=1, width=8, depth=3, first_omega0=3000.0)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    a = build_model(cfg)
    torch.manual_seed(0)
    b = build_model(ModelConfig(in_dim=1, out_dim=1, width=8, depth=3))
    x = torch.linspace(-1, 1, 5)[:, None]
    with torch.no_grad():
        first_a = torch.sin(3000.0 * a.layers[0](x))
        first_b = torch.sin(30.0 * b.layers[0](x))
        assert torch.allclose(a(x), a.layers[2](torch.sin(30.0 * a.layers[1](first_a))), atol=1e-5)
        assert torch.allclose(b(x), b.layers[2](torch.sin(30.0 * b.layers[1](first_b))), atol=1e-5)


def test_predict_memory_stays_flat_over_many_batches():
    """Scoring 4 M samples in 64 batches must not grow RSS by a batch's activations per
    batch: per-batch outputs kept in a list between the large transient activations
    fragmented glibc's heap (a 16.7 M-sample SDF grew by 4.1 GB; issue 9). A subprocess,
    so the measurement is this forward's alone; the big free first raises glibc's dynamic
    mmap threshold, the state in which the leak showed."""
    import subprocess
    import sys

    code = """
import torch
from intstream.models import ModelConfig, build_model, predict
def cur(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
torch.set_num_threads(1)
n = 1 << 22
coords = torch.rand(n, 3) * 2 - 1
m = build_model(ModelConfig(in_dim=3, out_dim=1, width=64, depth=3))
big = torch.empty(64 << 20, dtype=torch.uint8); big.fill_(1); del big
base = cur()
out = predict(m, coords, batch=65536)
assert out.shape == (n, 1)
print(cur() - base)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    growth = float(r.stdout.strip())
    # The output (16 MiB) and one batch's activations (~2 x 16 MiB) are expected; the
    # fragmentation added ~1 GiB (64 batches x 16 MiB).
    assert growth < 200, f"RSS grew {growth:.0f} MiB scoring 4 M samples"
