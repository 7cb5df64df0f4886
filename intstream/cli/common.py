"""Glue every command shares: upstream manifests on stdin, the JSON line, exit codes."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import sys
import traceback

import click

from intstream.errors import InputError

from . import options

__all__ = ["stage", "emit", "upstream", "setup_logging", "PROGRESS_STAGES"]

# Stages that report progress (and so take --log-interval).
PROGRESS_STAGES = ("ingest", "fit", "eval")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (CliRunner swaps it)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    def format(self, record):
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


def setup_logging(verbosity: int = 0, log_interval: float | None = None) -> None:
    """The ``intstream`` logger to stderr: -q (-1) warnings only and no progress, -qq errors only,
    0 info and progress (a bar on a terminal, a line every ``log_interval`` s otherwise), -v debug."""
    from intstream import progress

    logger = logging.getLogger("intstream")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False  # one copy on stderr even if a library configured the root logger
    level = logging.DEBUG if verbosity > 0 else logging.INFO if verbosity == 0 else (
        logging.WARNING if verbosity == -1 else logging.ERROR)
    logger.setLevel(level)
    progress.configure(enabled=False if verbosity < 0 else None, log_interval=log_interval or progress.LOG_INTERVAL)


class BadInput(click.ClickException):
    """Exit code 2 with one line naming the file and the problem."""

    exit_code = 2


def stage(name: str):
    """Wrap a command body: InputError -> exit 2, other failures -> exit 1, one line each.

    Tracebacks are printed only with ``--debug`` (on the group or the command) or ``-v``.
    Every stage also gets ``--config`` and ``-v/-q`` here (and ``--log-interval`` when it
    reports progress), so they mean the same everywhere.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            ctx = click.get_current_context()
            kwargs.pop("config", None)  # applied to the defaults before parsing (runconfig)
            verbosity = kwargs.pop("verbose", 0) - kwargs.pop("quiet", 0)
            setup_logging(verbosity, kwargs.pop("log_interval", None))
            debug = kwargs.pop("debug", False) or verbosity > 0 or bool((ctx.find_root().obj or {}).get("debug"))
            try:
                return fn(*args, **kwargs)
            except InputError as exc:
                if debug:
                    traceback.print_exc()
                raise BadInput(" ".join(exc.message.split())) from None  # one line, whatever the library said
            except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except KeyboardInterrupt as exc:  # errors.Interrupted says which signal: 143 for SIGTERM
                signame = f" by {exc}" if getattr(exc, "signum", None) else ""
                click.echo(f"intstream {name}: interrupted{signame}", err=True)
                sys.exit(getattr(exc, "exit_code", 130))
            except Exception as exc:  # runtime failure: one line, exit 1
                if debug:
                    traceback.print_exc()
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise click.ClickException(f"{name} failed: {exc.__class__.__name__}: {msg}") from None

        if name in PROGRESS_STAGES:
            run = options.log_interval(run)
        return options.config(options.verbosity(run))

    return wrap


def _finite(value):
    """JSON has no Infinity/NaN: a non-finite number becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def emit(manifest: dict) -> None:
    """Write the stage's one JSON manifest line on stdout."""
    line = json.dumps(_finite(manifest), default=str, allow_nan=False) + "\n"
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout is gone (a pipeline cut short). Send the rest of stdout
        # to /dev/null so exit does not fail flushing it; the exit code stays the stage's.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        click.echo("intstream: stdout is closed (broken pipe): the manifest line was not delivered", err=True)


def upstream(arg: str | None, key: str, *, also: tuple[str, ...] = ()) -> str:
    """Resolve a stage input: a path, or ``-``/omitted for the upstream manifest on stdin.

    ``key`` (then each of ``also``) names the manifest field that holds the path.
    """
    if arg not in (None, "-"):
        return arg
    stdin = sys.stdin  # click.get_text_stream is deprecated (click 8.2+); CliRunner swaps sys.stdin too
    if stdin is None or stdin.isatty():
        raise BadInput("no input given and stdin is a terminal (pass a path or pipe an upstream manifest)")
    lines = [ln for ln in stdin.read().splitlines() if ln.strip()]
    if not lines:
        raise BadInput("no input given and stdin is empty (the upstream stage printed no manifest)")
    try:
        manifest = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise BadInput(f"stdin: not a JSON manifest line: {lines[-1][:80]!r}") from None
    for k in (key,) + also:
        if isinstance(manifest, dict) and manifest.get(k):
            return str(manifest[k])
    raise BadInput(f"stdin: upstream manifest has no {key!r} field")
