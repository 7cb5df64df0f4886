"""intstream eval: score weights against a store and/or decode them, streaming."""

from __future__ import annotations

import click

from . import Command, options
from .common import emit, stage, upstream


@click.command(name="eval", cls=Command)
@click.argument("source", required=False)
@click.option("--store", type=click.Path(), help="Store (path or URL) to score against (default: the one recorded at fit time).")
@click.option(
    "--metrics",
    default="default",
    show_default=True,
    help="Comma list: image psnr,ssim; audio psnr,snr; sdf iou,chamfer; or all / none.",
)
@click.option("--decode", type=click.Path(), help="Decode to a file: .png .tif .wav .flac .ply .obj .zarr, or pyramidal .ome.tif / .ome.zarr "
                   "for QuPath and napari (.zarr also at a memory:// or s3:// URL).")
@click.option("--shape", help="Decode at another grid shape, e.g. 1536,1024.")
@options.device
@click.option("--plot", type=click.Path(), help="Folder for diagnostic PNG plots (needs matplotlib).")
@click.option("--batch", type=click.IntRange(1, options.MAX_COUNT), default=65536, show_default=True, help="Samples per forward pass.")
@options.overwrite
@options.debug
@stage("eval")
def eval_cmd(source, store, metrics, decode, shape, device, plot, batch, overwrite):
    """Score SOURCE (weights file, run dir or checkpoint; default: the manifest on stdin)."""
    from intstream.evaluate import evaluate

    src = upstream(source, "weights", also=("checkpoint", "run_dir"))
    emit(evaluate(src, store=store, metrics=metrics, decode=decode, shape=shape, device=device,
                  plot=plot, overwrite=overwrite, batch=batch))
