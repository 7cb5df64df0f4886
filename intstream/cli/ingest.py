"""intstream ingest: a source file -> a signal store."""

from __future__ import annotations

import click

from intstream.normalize import DEFAULT_TARGETS, TARGETS

from . import Command, options
from .common import emit, stage


def _parse_chunks(ctx, param, value):
    if value is None:
        return None
    try:
        chunks = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of integers like 1024,1024") from None
    if any(c < 1 for c in chunks):
        raise click.BadParameter(f"{value!r}: chunk sizes must be positive")
    if any(c > options.MAX_COUNT for c in chunks):
        raise click.BadParameter(f"{value!r}: chunk sizes must be at most {options.MAX_COUNT}")
    return chunks


@click.command(cls=Command)
@click.argument("source", type=click.Path(dir_okay=True, path_type=str))
@options.output("Store to write: a path, or a file://, memory://, s3:// or gs:// URL "
                "(default: <name>.zarr in the current folder).")
@click.option(
    "--kind",
    type=click.Choice(["auto", "image", "audio", "sdf", "array"]),
    default="auto",
    show_default=True,
    help="What the source holds (auto: from the file name).",
)
@click.option("--chunks", callback=_parse_chunks, help="Grid chunk shape, e.g. 1024,1024 (default per kind).")
@click.option(
    "--resolution",
    type=click.IntRange(2, 1024),
    default=256,
    show_default=True,
    help="SDF grid edge for meshes.",
)
@click.option(
    "--max-pixels",
    type=click.IntRange(1, 1 << 48),
    envvar="INTSTREAM_MAX_PIXELS",
    help="Decode limit in pixels (samples) of what is decoded whole: a PNG/JPEG/WebP/BMP image, a TIFF strip "
    "or tile, a Zarr chunk (default 2**28, a 16384² image; env INTSTREAM_MAX_PIXELS). Guards against "
    "decompression bombs.",
)
@click.option("--targets", type=click.Choice(TARGETS),
              help="Training targets: signed = [-1, 1], unit = [0, 1] (the paper's). Default per kind: "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_TARGETS.items()) + "; SDF distances stay as they are.")
@click.option("--level", type=click.IntRange(0, 64), default=0, show_default=True,
              help="Resolution level of a pyramidal TIFF (SVS, NDPI, OME-TIFF) or OME-Zarr image (0: full).")
@options.overwrite
@options.debug
@stage("ingest")
def ingest(source, output, kind, chunks, resolution, max_pixels, targets, level, overwrite):
    """Convert SOURCE (image, audio, mesh or array) into a chunked signal store."""
    from intstream.ingest import ingest as run
    from intstream.readers.image import pixel_limit

    with pixel_limit(max_pixels):
        manifest = run(source, output, kind=kind, chunks=chunks, resolution=resolution, targets=targets,
                       level=level, overwrite=overwrite)
    emit(manifest)
