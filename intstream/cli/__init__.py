"""The ``intstream`` command line: one thin module per stage.

Commands are imported lazily so that ``intstream --help`` never imports torch or dask.
"""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]

# name -> "module:function", relative to intstream.cli
COMMANDS = {
    "ingest": "ingest:ingest",
    "info": "info:info",
    "fit": "fit:fit",
    "export-weights": "export_weights:export_weights",
    "eval": "eval:eval_cmd",
}

HELP = {
    "ingest": "Convert an image, audio clip, mesh or array into a signal store.",
    "info": "Print a signal store's metadata as JSON.",
    "fit": "Train an implicit neural representation of a store with INT.",
    "export-weights": "Write a run's weights as one self-contained safetensors file.",
    "eval": "Score weights against a store and/or decode them to a file.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def format_commands(self, ctx, formatter):
        # Short help without importing every command module.
        rows = [(name, HELP[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="intstream")
@click.option("--debug", is_flag=True, envvar="INTSTREAM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """intstream: compress huge signals into neural network weights with Implicit Neural Teaching.

    Stages chain through JSON manifest lines on stdout:

        intstream ingest photo.png | intstream fit | intstream export-weights -o w.safetensors | intstream eval
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
