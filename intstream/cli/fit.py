"""intstream fit: a signal store -> a run directory with checkpoints and a log."""

from __future__ import annotations

import sys

import click

from intstream.teach.config import STRATEGIES
from intstream.teach.schedules import parse_interval, ratio_at
from intstream.models.sizing import MODEL_CHOICES, TILED_DEFAULTS

from . import Command, options
from .common import emit, stage, upstream


def _by_kind(field: str) -> str:
    """What runs when an option is left out, per strategy and kind: `resolve_config` itself,
    so --help shows the values a run really gets (T after the strategy's STEPS_FACTOR)."""
    from intstream.fit import KIND_DEFAULTS, FitConfig, resolve_config

    groups: dict[str, list[str]] = {}
    for strategy in STRATEGIES:
        values = ", ".join(f"{kind} {getattr(resolve_config(FitConfig(strategy=strategy), kind), field):g}"
                           for kind in KIND_DEFAULTS)
        groups.setdefault(values, []).append(strategy)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{'/'.join(names)}: {values}" for values, names in groups.items())


def _teacher_presets() -> str:
    from intstream.teach.config import resolve_teacher

    lines = ["\b", "Teacher presets (what each --strategy runs unless an option overrides it;",
             "pool and weighting have no option: set them in a --config file):"]
    for strategy in STRATEGIES:
        cfg = resolve_teacher(strategy).to_dict()
        lines.append(f"  {strategy}: " + ", ".join(f"{k.replace('_', '-')} {v}" for k, v in cfg.items()
                                                    if k != "strategy"))
    return "\n".join(lines)


def _checked_by(validate):
    """A click callback: ``validate(value)``'s ValueError becomes a BadParameter (exit 2)."""
    def callback(ctx, param, value):
        if value is None:
            return None
        try:
            validate(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        return value
    return callback


_check_interval = _checked_by(parse_interval)
_check_ratio_schedule = _checked_by(lambda value: ratio_at(value, 0, 10))


@click.command(cls=Command, epilog=_teacher_presets())
@click.argument("store", required=False)
@options.output("Run directory (default: <store name>.run in the current folder).")
@click.option("--steps", type=click.IntRange(1, options.MAX_COUNT), help=f"Training steps T (default, by strategy and kind: {_by_kind('steps')}).")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="intstream", show_default=True,
              help="Teacher: intstream (default, measured best), int (the paper's), full, random.")
@click.option("--ratio", type=options.FiniteFloat(0, 1, min_open=True), help="Initial selected fraction r0 (paper: 0.2).")
@click.option("--ratio-schedule", callback=_check_ratio_schedule,
              help="How the ratio moves: constant, linear, step, cosine (rising to 1) or decay:F "
                   "(every sample at first, down to r0 by F·T: a full-batch warm start).")
@click.option("--interval-schedule", callback=_check_interval, help="Reselection interval: dense, incremental or fixed:N.")
@click.option("--random-share", type=options.FiniteFloat(0, 1), help="Share of each selection drawn at random.")
@click.option("--score-dtype", type=click.Choice(["float32", "bfloat16"]), help="Precision of the scoring forward: bfloat16 runs where the device computes it natively "
                   "(CUDA sm80+, CPUs with AVX-512 BF16 or AMX) and float32 elsewhere, where emulated bf16 is slower; "
                   "config.json's score_dtype_runs says which ran.")
@click.option("--arch", type=click.Choice(["siren", "fourier"]), default="siren", show_default=True)
@click.option("--model", type=click.Choice(MODEL_CHOICES), default="auto", show_default=True,
              help="single: one SIREN (the paper's); tiled: a bank of small SIRENs, one per tile, blended "
                   "without seams; auto: tiled when one 6x256 SIREN has < 1 parameter per value (and no --width).")
@click.option("--capacity", type=options.FiniteFloat(0, options.MAX_CAPACITY, min_open=True),
              help="Parameters per signal value (sample x channel); sizes the width of either model "
                   "(tiled default per kind: " + ", ".join(f"{k} {TILED_DEFAULTS[k]['capacity']:g}" for k in ("image", "audio", "sdf"))
                   + ").")
@click.option("--bpp", type=options.FiniteFloat(0, options.MAX_BITS, min_open=True),
              help="Rate control (images): size the model so its int8 weights file is this many bits per pixel.")
@click.option("--kbps", type=options.FiniteFloat(0, options.MAX_KBPS, min_open=True), help="Rate control (audio): kbit/s of weights file.")
@click.option("--bits-per-sample", type=options.FiniteFloat(0, options.MAX_BITS, min_open=True),
              help="Rate control (any kind): bits of weights file per grid sample (sets --capacity; "
                   "export-weights then picks the bit width).")
@click.option("--tile", help="Tiled model: samples per tile per axis, e.g. 64x64 or 64 (default: "
                   + ", ".join(f"{k} {TILED_DEFAULTS[k]['tile']}" for k in ("image", "audio", "sdf")) + ").")
@click.option("--overlap", type=options.FiniteFloat(0), help="Tiled model: blending margin in samples each side of a tile border.")
@click.option("--width", type=click.IntRange(1, 1 << 16), help="Hidden units per layer (default: 256 single; tiled: from --capacity).")
@click.option("--depth", type=click.IntRange(2, 1024), help="Linear layers, the last one linear (default: 6 single, 4 tiled).")
@click.option("--omega", "omega0", type=options.FiniteFloat(0, min_open=True), default=30.0, show_default=True, help="SIREN omega_0.")
@click.option("--first-omega", "first_omega0", type=options.FiniteFloat(0, min_open=True), help="First layer's omega_0 if different (e.g. 3000 for audio).")
@click.option("--lr", type=options.FiniteFloat(0, min_open=True), help=f"Adam learning rate, cosine-decayed over T (default: {_by_kind('lr')}).")
@options.seed
@click.option("--time-budget", type=options.FiniteFloat(0, min_open=True), help="Stop after this many training seconds of this process (a resumed run gets them afresh). Without --steps, T is fitted to it: after 5%, 25% and 50% of the budget the LR's cosine is moved onto the steps the budget holds at the rate measured since the last fit, so the run anneals (teachers with a step ratio or incremental intervals keep their T).")
@click.option("--target-psnr", type=options.FiniteFloat(), help="Stop once the training PSNR reaches this (dB).")
@options.device
@click.option("--scheduler", help="dask.distributed scheduler address for out-of-core rounds (default: local threads).")
@click.option("--memory-budget", type=options.Size(), default="2G", show_default=True,
              help="Peak memory (RSS) of the whole fit; the plan (in core or rounds, batches) fits it, or fit refuses.")
@click.option("--out-of-core", is_flag=True, help="Train in rounds over the store's chunks even if it fits the budget.")
@click.option("--measure-psnr", is_flag=True,
              help="Out of core: measure each logged PSNR over every sample (a pass over the store) "
                   "instead of estimating it from per-chunk statistics.")
@click.option("--log-every", type=click.IntRange(1, options.MAX_COUNT), default=100, show_default=True, help="Steps between log lines.")
@click.option("--checkpoint-every", type=options.FiniteFloat(0), default=300.0, show_default=True,
              help="Seconds between checkpoints.")
@click.option("--resume", is_flag=True, help="Continue from the run directory's checkpoint (fresh start if none); options that differ from it are refused, except --time-budget, --checkpoint-every and a larger --steps for a finished run.")
@options.overwrite
@options.debug
@stage("fit")
def fit(store, output, resume, overwrite, **opts):
    """Train an implicit neural representation of STORE (or the upstream store) with a teacher.

    STORE is a path or a URL (file://, http(s)://, memory://, s3://, gs://); chunk tasks
    reopen it by that URL."""
    from pathlib import Path

    from intstream.fit import FitConfig, fit as run

    store_path = upstream(store, "store")
    run_dir = output or str(Path.cwd() / (Path(store_path).name.removesuffix(".zarr") + ".run"))
    extra = click.get_current_context().meta.get("intstream.config_extra", {})  # --config keys with no option
    # What the user set (command line, environment, --config), so --resume can refuse changes to it.
    ctx = click.get_current_context()
    explicit = {k for k in opts if ctx.get_parameter_source(k) not in (None, click.core.ParameterSource.DEFAULT)}
    rate = {k: opts.pop(k) for k in ("bpp", "kbps", "bits_per_sample")}
    planned = None
    if any(v is not None for v in rate.values()):
        from intstream.rate import plan_for_fit

        planned = plan_for_fit(store_path, rate, {**extra, **opts})
        opts["capacity"] = planned["capacity"]
        explicit = (explicit - set(rate)) | {"capacity"}
    explicit -= set(rate)
    manifest = run(store_path, run_dir, FitConfig(**{**extra, **opts}), resume=resume, overwrite=overwrite,
                   explicit=explicit | set(extra))
    if planned is not None:
        from intstream.rate import write_target

        write_target(manifest["run_dir"], planned["bits_per_sample"], planned=planned)
        manifest["rate"] = planned
    if manifest["interrupted"]:
        # Before the manifest: stdout may be a pipe whose reader is gone (emit tolerates that).
        click.echo(f"intstream fit: {manifest['interrupted']}: checkpoint written at step {manifest['steps']}; "
                   f"rerun with --resume to continue", err=True)
    emit(manifest)
    if manifest["interrupted"]:
        sys.exit(143 if manifest["interrupted"] == "SIGTERM" else 130)
