"""Quantisation-aware fine-tuning: a short training phase with the export quantiser in the loop.

`export-weights --finetune N` runs `finetune` on the network of a checkpoint before it
writes integer weights: N Adam steps on batches of the store, where every tensor the
export will quantise is replaced in the forward pass by its fake-quantised copy
(`fake_quant`: the same per-group affine int-N grid as `intstream.export.quantize`)
and the gradient passes straight through the rounding (the straight-through
estimator, Bengio et al. 2013), so the float weights drift to where their quantised
copies fit the signal. The fit loop itself is untouched: this is a separate, small
loop over random batches (memory: one batch plus the network).

Measured on a fitted 128² Kodak crop (SIREN 5x64, 38.47 dB in float32; PSNR by eval of
the exported file; benchmarks/results/rd.md), drop against float32 without -> with 100
steps: int8 0.67 -> 0.34 dB, int6 5.77 -> 3.87, int5 10.94 -> 7.76, int4 16.43 ->
11.33 dB (300 steps: a little less gain). int8 does not reach 0.1 dB: most of its drop
is the first hidden layer's (0.46 dB alone), whose error passes through two sines.

The learning rate follows the bit width (`DEFAULT_LR`): Adam moves every weight by
about ``lr`` per step, so ``lr`` must stay well below one quantisation step (int8 on a
SIREN: ~1e-4), or fine-tuning scrambles what the fit found (1e-4 at int8 made the drop
worse, 0.67 -> 1.04 dB in 300 steps).
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["DEFAULT_LR", "fake_quant", "quantised_names", "finetune", "quantised_psnr"]

# Adam learning rate per bit width (measured on fitted SIRENs, see the module notes).
DEFAULT_LR = {8: 3e-6, 7: 1e-5, 6: 3e-5, 5: 1e-4, 4: 3e-4, 3: 5e-4}

# Samples above which the store is not loaded whole: batches come chunk by chunk.
IN_CORE_SAMPLES = 1 << 23
# Samples used to measure the PSNR before and after (all of them when the signal is smaller).
MEASURE_SAMPLES = 1 << 20


def fake_quant(w, bits: int):
    """``w`` with its forward value on the int-``bits`` grid of `intstream.export.quantize`, identity gradient.

    Groups are output rows of a 2-D ``[out, in]`` weight and (tile, output unit) of an
    ``[..., in, out]`` tensor; each group's range ``[min(w, 0), max(w, 0)]`` spans
    ``2**bits`` levels, with the export's float16 scales (rounded up) and its float64
    rounding, so the grid trained against is exactly the one written: a scale off by
    float16's 2^-11 moves the top levels by a tenth of a step and undoes what was learnt.
    """
    import torch

    from .export import _fp16_ceil

    axis = -1 if w.ndim == 2 else -2
    with torch.no_grad():
        levels = float((1 << bits) - 1)
        wd = w.detach().double()
        lo = wd.amin(axis, keepdim=True).clamp(max=0)
        hi = wd.amax(axis, keepdim=True).clamp(min=0)
        step = (hi - lo) / levels
        step = torch.where(step > 0, step, torch.ones_like(step))
        scale = torch.from_numpy(_fp16_ceil(step.cpu().numpy()).astype(np.float64)).to(wd.device)
        zero = torch.round(-lo / scale).clamp(0, levels)
        v = torch.minimum(torch.maximum(torch.round(wd / scale), -zero), levels - zero)
        # float32 product, as `intstream.export.dequantize` computes it
        wq = v.float() * scale.float()
    return w + (wq - w).detach()


def quantised_names(model, keep_fp32: set[str]) -> list[str]:
    """Parameters the export quantises (`intstream.export.is_quantised`)."""
    from .export import is_quantised

    return [n for n, p in model.named_parameters() if is_quantised(n, tuple(p.shape), keep_fp32)]


class _Batches:
    """Random training batches of a store: from memory when it fits, else a few chunks at a time."""

    def __init__(self, store, batch: int, gen: np.random.Generator, device):
        self.store, self.batch, self.gen, self.device = store, batch, gen, device
        self.in_core = store.n_samples <= IN_CORE_SAMPLES
        self.pool = None
        self.uses = 0
        if self.in_core:
            self.pool = store.load_all()

    def _refill(self) -> None:
        # A few random chunks (about 4 batches' worth), reused for a few steps.
        slices = self.store.chunk_slices()
        order = self.gen.permutation(len(slices))
        xs, ys, n = [], [], 0
        for i in order:
            x, y = self.store.block_samples(slices[i])
            xs.append(x)
            ys.append(y)
            n += len(x)
            if n >= 4 * self.batch:
                break
        self.pool = (np.concatenate(xs), np.concatenate(ys))
        self.uses = 0

    def next(self):
        import torch

        if not self.in_core and (self.pool is None or self.uses >= 8):
            self._refill()
        self.uses += 1
        x, y = self.pool
        if len(x) > self.batch:
            idx = self.gen.integers(0, len(x), self.batch)
            x, y = x[idx], y[idx]
        return torch.from_numpy(x).to(self.device), torch.from_numpy(y).to(self.device)


def _measure_set(store, gen: np.random.Generator):
    """Coordinates and targets to measure PSNR on: every sample, or a fixed random subset."""
    if store.n_samples <= MEASURE_SAMPLES:
        return store.load_all()
    idx = np.sort(gen.choice(store.n_samples, MEASURE_SAMPLES, replace=False))
    return store.coords_at(idx), store.targets_at(idx)


def quantised_psnr(model, x, y, *, bits: int | None, names: list[str], data_range: float = 1.0) -> float:
    """PSNR (dB) of ``model`` on ``(x, y)`` with ``names`` fake-quantised to ``bits`` (None: as is)."""
    import torch
    from torch.func import functional_call

    params = dict(model.named_parameters())
    if bits is not None:
        params = {n: (fake_quant(p, bits) if n in names else p) for n, p in params.items()}
    params.update(model.named_buffers())
    dev = next(model.parameters()).device
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    sq = 0.0
    with torch.no_grad():
        for i in range(0, len(x), 1 << 16):
            pred = functional_call(model, params, (x[i : i + (1 << 16)].to(dev),))
            sq += float((pred - y[i : i + (1 << 16)].to(dev)).double().square().sum())
    mse = sq / max(y.numel(), 1)
    return float("inf") if mse <= 0 else 10 * math.log10(data_range**2 / mse)


def finetune(
    model,
    store,
    *,
    bits: int,
    steps: int,
    keep_fp32: set[str] = frozenset(),
    lr: float | None = None,
    batch: int = 1 << 16,
    seed: int = 0,
    device: str = "cpu",
) -> dict:
    """Fine-tune ``model`` in place for ``steps`` Adam steps with int-``bits`` fake quantisation.

    Parameters
    ----------
    model
        The fitted network (float32), trained in place.
    store
        Its `intstream.store.SignalStore`.
    bits
        The export's integer width.
    keep_fp32
        Parameter names the export stores in float32 (not quantised here either).
    lr
        Adam learning rate, cosine-decayed to lr/100; default `DEFAULT_LR` of ``bits``.
    batch
        Samples per step (the whole signal when smaller).

    Returns
    -------
    dict
        ``steps``, ``best_step`` (the weights kept: the best quantised PSNR of ~10
        measured points, 0 = the start), ``seconds``, ``lr``, ``bits`` and the PSNR (dB, on every sample or a
        fixed random subset of 2^20) in float32 and quantised, before and after.
    """
    import torch
    from torch.func import functional_call

    t0 = time.perf_counter()
    if lr is None:
        lr = DEFAULT_LR[bits]
    gen = np.random.default_rng(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    model.to(dev).train()
    names = quantised_names(model, set(keep_fp32))
    mx, my = _measure_set(store, gen)
    before = {"psnr_float": quantised_psnr(model, mx, my, bits=None, names=names),
              "psnr_quantised": quantised_psnr(model, mx, my, bits=bits, names=names)}
    batches = _Batches(store, batch, gen, dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr / 100)
    buffers = dict(model.named_buffers())
    # The quantised PSNR is not monotone in the steps (measured: 100 steps beat 300 at
    # every width), so keep the best of ~10 measured points, the start included: the
    # fine-tuned file is never worse than the plain one on the measured samples.
    every = max(1, steps // 10)
    best_q, best_step = before["psnr_quantised"], 0
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for step in range(1, steps + 1):
        x, y = batches.next()
        params = {n: (fake_quant(p, bits) if n in names else p) for n, p in model.named_parameters()}
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(functional_call(model, {**params, **buffers}, (x,)), y)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            q = quantised_psnr(model, mx, my, bits=bits, names=names)
            if q > best_q:
                best_q, best_step = q, step
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    after = {"psnr_float": quantised_psnr(model, mx, my, bits=None, names=names),
             "psnr_quantised": quantised_psnr(model, mx, my, bits=bits, names=names)}
    return {"steps": steps, "best_step": best_step, "bits": bits, "lr": lr, "batch": batch, "seconds": round(time.perf_counter() - t0, 3),
            "measured_on": int(len(mx)), "before": before, "after": after}
