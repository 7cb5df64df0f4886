"""intstream export-weights: a run's weights -> one self-contained safetensors file."""

from __future__ import annotations

import click

from . import Command, options
from .common import emit, stage, upstream
from intstream.export import CODERS, WEIGHT_DTYPES


@click.command(cls=Command)
@click.argument("source", required=False)
@options.output("Weights file to write (.safetensors).", required=True)
@click.option(
    "--dtype",
    type=click.Choice(WEIGHT_DTYPES),
    help="Stored precision (default float16; with a rate target: the widest intN that fits). int8..int3 are "
         "per-row (per tile and row) affine, entropy coded, dequantised on load.",
)
@click.option("--coder", type=click.Choice(CODERS), default="ans", show_default=True,
              help="Entropy coder of intN weights: ans (constriction, smallest) or zstd.")
@click.option("--finetune", type=click.IntRange(0, options.MAX_COUNT), default=0, show_default=True,
              help="Steps of quantisation-aware fine-tuning before an intN export (needs the run's store).")
@click.option("--finetune-lr", type=options.FiniteFloat(0, min_open=True),
              help="Fine-tuning learning rate (default by bit width: 3e-6 int8 ... 3e-4 int4).")
@click.option("--bpp", type=options.FiniteFloat(0, options.MAX_BITS, min_open=True), help="Target size in bits per pixel (images).")
@click.option("--kbps", type=options.FiniteFloat(0, options.MAX_KBPS, min_open=True), help="Target size in kbit/s (audio).")
@click.option("--bits-per-sample", type=options.FiniteFloat(0, options.MAX_BITS, min_open=True),
              help="Target size in bits per grid sample (any kind). Default target: the one fit --bpp/--kbps recorded.")
@options.device
@options.overwrite
@options.debug
@stage("export-weights")
def export_weights(source, output, dtype, coder, finetune, finetune_lr, bpp, kbps, bits_per_sample, device, overwrite):
    """Write the weights of SOURCE (a run dir or checkpoint; default: the fit manifest on stdin)."""
    from intstream.export import export_weights as run

    src = upstream(source, "checkpoint", also=("run_dir",))
    target = None
    if any(v is not None for v in (bpp, kbps, bits_per_sample)):
        from intstream.checkpoint import find_checkpoint, load_checkpoint
        from intstream.rate import target_bits

        meta = (load_checkpoint(find_checkpoint(src)).get("store") or {}).get("meta") or {}
        target = target_bits(meta, bpp=bpp, kbps=kbps, bits_per_sample=bits_per_sample)
    emit(run(src, output, dtype=dtype, coder=coder, overwrite=overwrite, finetune=finetune, finetune_lr=finetune_lr,
             bits_per_sample=target, device=device))
