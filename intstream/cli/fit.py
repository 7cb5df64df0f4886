"""intstream fit: a signal store -> a run directory with checkpoints and a log."""

from __future__ import annotations

import sys

import click

from intstream.teach.config import STRATEGIES

from . import options
from .common import emit, stage, upstream


def _parse_size(ctx, param, value):
    if value is None:
        return None
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    v = value.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if v and v[-1] in units:
            return int(float(v[:-1]) * units[v[-1]])
        return int(float(v))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 2G, 512M or 1000000") from None


@click.command()
@click.argument("store", required=False)
@options.output("Run directory (default: <store name>.run in the current folder).")
@click.option("--steps", type=click.IntRange(1), help="Training steps T (default: 5000 images/audio, 10000 SDF).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="intstream", show_default=True,
              help="Teacher: intstream (default, measured best), int (the paper's), full, random.")
@click.option("--ratio", type=click.FloatRange(0, 1, min_open=True), help="Initial selected fraction r0 (paper: 0.2).")
@click.option("--ratio-schedule", type=click.Choice(["constant", "linear", "step", "cosine"]), help="How the ratio grows.")
@click.option("--interval-schedule", help="Reselection interval: dense, incremental or fixed:N.")
@click.option("--random-share", type=click.FloatRange(0, 1), help="Share of each selection drawn at random.")
@click.option("--score-dtype", type=click.Choice(["float32", "bfloat16"]), help="Precision of the scoring forward.")
@click.option("--arch", type=click.Choice(["siren", "fourier"]), default="siren", show_default=True)
@click.option("--width", type=click.IntRange(1), default=256, show_default=True, help="Hidden units per layer.")
@click.option("--depth", type=click.IntRange(2), default=6, show_default=True, help="Linear layers (5 sine + 1 linear).")
@click.option("--omega", "omega0", type=float, default=30.0, show_default=True, help="SIREN omega_0.")
@click.option("--first-omega", "first_omega0", type=float, help="First layer's omega_0 if different (e.g. 3000 for audio).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), help="Adam learning rate (default: 1e-3 images, 1e-4 audio/SDF).")
@options.seed
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), help="Stop after this many training seconds.")
@click.option("--target-psnr", type=float, help="Stop once the training PSNR reaches this (dB).")
@options.device
@click.option("--scheduler", help="dask.distributed scheduler address for out-of-core rounds (default: local threads).")
@click.option("--memory-budget", callback=_parse_size, default="2G", show_default=True,
              help="Memory for training data; larger signals train out of core.")
@click.option("--log-every", type=click.IntRange(1), default=100, show_default=True, help="Steps between log lines.")
@click.option("--checkpoint-every", type=click.FloatRange(0), default=300.0, show_default=True,
              help="Seconds between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint (fresh start if none).")
@options.overwrite
@options.debug
@stage("fit")
def fit(store, output, resume, overwrite, **opts):
    """Train an implicit neural representation of STORE (or the upstream store) with a teacher."""
    from pathlib import Path

    from intstream.fit import FitConfig, fit as run

    store_path = upstream(store, "store")
    run_dir = output or str(Path.cwd() / (Path(store_path).name.removesuffix(".zarr") + ".run"))
    # What the user set (command line, environment), so --resume can refuse changes to it.
    ctx = click.get_current_context()
    explicit = {k for k in opts if ctx.get_parameter_source(k) not in (None, click.core.ParameterSource.DEFAULT)}
    manifest = run(store_path, run_dir, FitConfig(**opts), resume=resume, overwrite=overwrite, explicit=explicit)
    if manifest["interrupted"]:
        # Before the manifest: stdout may be a pipe whose reader is gone (emit tolerates that).
        click.echo(f"intstream fit: {manifest['interrupted']}: checkpoint written at step {manifest['steps']}; "
                   f"rerun with --resume to continue", err=True)
    emit(manifest)
    if manifest["interrupted"]:
        sys.exit(143 if manifest["interrupted"] == "SIGTERM" else 130)
