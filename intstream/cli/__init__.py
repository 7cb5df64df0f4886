"""The ``intstream`` command line: one thin module per stage.

Commands are imported lazily so that ``intstream --help`` never imports torch or dask.
"""

from __future__ import annotations

import contextlib
import importlib

import click

__all__ = ["main", "Command", "usage_line"]

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


class OneLineUsage(click.ClickException):
    """A usage error shown as one ``Error: ...`` line (exit 2), without click's usage block."""

    exit_code = 2


def _param_name(param: click.Parameter | None) -> str | None:
    if param is None:
        return None
    if param.opts and isinstance(param, click.Option):
        return max(param.opts, key=len)  # --output rather than -o
    return param.human_readable_name


def usage_line(exc: click.UsageError) -> str:
    """The one line a usage error becomes: ``--lr: 'nan' is not a finite number``."""
    if isinstance(exc, click.MissingParameter):
        name = _param_name(exc.param) or exc.param_hint
        what = exc.param_type or getattr(exc.param, "param_type_name", "parameter")
        text = f"{name}: missing (a required {what})" if name else exc.format_message()
    elif isinstance(exc, click.BadParameter):
        name = _param_name(exc.param) or exc.param_hint
        text = f"{name}: {exc.message}" if name else exc.format_message()
    elif isinstance(exc, click.NoSuchOption):
        text = f"{exc.option_name}: no such option"
        if exc.possibilities:
            text += f" (did you mean {', '.join(sorted(exc.possibilities))}?)"
    else:
        text = exc.format_message()
    return " ".join(str(text).split()).rstrip(".")


class _OneLineErrors:
    """Mixin: usage errors raised while parsing or invoking become one line (exit 2).

    Click's own `UsageError.show` prints a usage block and a "Try --help" hint first;
    stages print exactly one line on stderr for every refusal. Help requested with no
    arguments (`NoArgsIsHelpError`) still shows the help.
    """

    def make_context(self, *args, **kwargs):
        with _one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _one_line():
            return super().invoke(ctx)


# click >= 8.2 raises this for a group called with no arguments: it shows the help.
_HELP_ONLY = getattr(click.exceptions, "NoArgsIsHelpError", ())


@contextlib.contextmanager
def _one_line():
    try:
        yield
    except click.UsageError as exc:
        if isinstance(exc, _HELP_ONLY):
            raise
        raise OneLineUsage(usage_line(exc)) from None


class Command(_OneLineErrors, click.Command):
    """Every stage command's class: one-line usage errors even when invoked on its own."""


class LazyGroup(_OneLineErrors, click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def resolve_command(self, ctx, args):
        if args and args[0] not in COMMANDS and not args[0].startswith("-"):
            ctx.fail(f"{args[0]}: no such command (commands: {', '.join(sorted(COMMANDS))})")
        return super().resolve_command(ctx, args)

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
