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
    f = click.option("-q", "--quiet", count=True, help="Less on stderr.")(f)
    f = click.option("-v", "--verbose", count=True, help="More on stderr.")(f)
    return f
