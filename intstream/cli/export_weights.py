"""intstream export-weights: a run's weights -> one self-contained safetensors file."""

from __future__ import annotations

import click

from . import Command, options
from .common import emit, stage, upstream


@click.command(cls=Command)
@click.argument("source", required=False)
@options.output("Weights file to write (.safetensors).", required=True)
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32", "int8"]),
    default="float16",
    show_default=True,
    help="Stored precision; int8 is per-output-row affine, dequantised on load.",
)
@options.overwrite
@options.debug
@stage("export-weights")
def export_weights(source, output, dtype, overwrite):
    """Write the weights of SOURCE (a run dir or checkpoint; default: the fit manifest on stdin)."""
    from intstream.export import export_weights as run

    emit(run(upstream(source, "checkpoint", also=("run_dir",)), output, dtype=dtype, overwrite=overwrite))
