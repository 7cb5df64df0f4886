"""The shared option registry: each option means the same in every command."""

from __future__ import annotations

import click

__all__ = ["output", "overwrite", "device", "seed", "verbosity", "debug"]

overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
device = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the network runs (auto: cuda when available).",
)
seed = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
debug = click.option("--debug", is_flag=True, envvar="INTSTREAM_DEBUG", help="Show tracebacks on errors.")


def output(help_text: str, required: bool = False):
    return click.option("-o", "--output", "output", type=click.Path(), required=required, help=help_text)


def verbosity(f):
    f = click.option("-q", "--quiet", count=True, help="Less on stderr: no progress (-qq: errors only).")(f)
    f = click.option("-v", "--verbose", count=True, help="More on stderr: debug logs and tracebacks.")(f)
    return f


def log_interval(f):
    """``--log-interval``: seconds between plain progress lines when stderr is not a terminal."""
    from intstream.progress import LOG_INTERVAL

    return click.option("--log-interval", type=click.FloatRange(0, min_open=True), default=LOG_INTERVAL,
                        show_default=True, envvar="INTSTREAM_LOG_INTERVAL", metavar="SECONDS",
                        help="Seconds between progress lines when stderr is not a terminal (batch logs).")(f)


def config(f):
    """``--config FILE``: option values from TOML (or a run's config.json); the command line wins."""
    from .runconfig import apply_config

    return click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=True,
                        callback=apply_config, metavar="FILE",
                        help="TOML file of option = value (keys: option names; a [command] table per "
                             "stage), or a run's config.json; options given here override it.")(f)
