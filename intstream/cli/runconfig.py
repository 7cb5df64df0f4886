"""``--config FILE``: option values from a TOML file (or a run's ``config.json``).

Keys are the command's option names, with dashes or underscores (``time-budget``,
``time_budget``; an option's destination name such as ``omega0`` for ``--omega`` works
too). A TOML file may hold one table per command (``[ingest]``, ``[fit]``, ``[eval]``)
beside top-level keys that apply to whichever command reads it. Options given on the
command line override the file; a key no option (and, for ``fit``, no `FitConfig`
field) knows is refused with exit 2. The ``config.json`` that ``fit`` writes into its
run directory loads as such: its ``fit`` section is the resolved `FitConfig`, so
``intstream fit --config run/config.json`` repeats a run.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import click

__all__ = ["load_config", "apply_config", "extra_keys"]

# Keys a command accepts from a file although they have no command-line option:
# fit passes them to `FitConfig` (a run's config.json holds every field).
_EXTRA = {"fit": ("intstream.fit", "FitConfig")}


def extra_keys(command: str) -> frozenset[str]:
    if command not in _EXTRA:
        return frozenset()
    import dataclasses
    import importlib

    module, name = _EXTRA[command]
    return frozenset(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


def _fail(path, problem: str):
    from .common import BadInput

    raise BadInput(f"{path}: {problem}")


def load_config(path: str | Path, command: str, sections: tuple[str, ...] = ()) -> dict:
    """The flat ``{key: value}`` a config file gives ``command`` (keys not yet checked).

    ``sections`` names the other commands' tables, which are skipped rather than refused.
    """
    p = Path(path)
    if not p.is_file():
        _fail(p, "no such config file")
    try:
        if p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            data = tomllib.loads(p.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        _fail(p, f"not a valid {'JSON' if p.suffix == '.json' else 'TOML'} config ({' '.join(str(exc).split())})")
    if not isinstance(data, dict):
        _fail(p, "a config file holds a table of option = value")
    if p.suffix == ".json" and isinstance(data.get("fit"), dict) and "teacher" in data:
        # A run's config.json: the resolved FitConfig, beside derived facts (teacher, model).
        return {k: v for k, v in data["fit"].items() if v is not None} if command == "fit" else {}
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key == command:
                flat.update(value)
            elif key not in sections:
                _fail(p, f"unknown table [{key}] (tables are named after commands: {', '.join(sections)})")
        else:
            flat[key] = value
    return flat


def apply_config(ctx: click.Context, param: click.Parameter, value) -> None:
    """Eager callback of ``--config``: the file's values become the command's defaults."""
    if value is None:
        return
    from . import COMMANDS

    command = ctx.info_name or ctx.command.name
    values = load_config(value, command, tuple(COMMANDS))
    names = {}
    for prm in ctx.command.params:
        if prm.name in ("config", "help"):
            continue
        names[prm.name] = prm.name
        for opt in getattr(prm, "opts", []) + getattr(prm, "secondary_opts", []):
            if opt.startswith("--"):
                names[opt[2:].replace("-", "_")] = prm.name
    extra = extra_keys(command)
    defaults, passthrough, unknown = {}, {}, []
    for key, v in values.items():
        k = str(key).replace("-", "_")
        if k in names:
            defaults[names[k]] = v
        elif k in extra:
            passthrough[k] = v
        else:
            unknown.append(str(key))
    if unknown:
        known = sorted(set(names) - {"debug", "verbose", "quiet"} | extra)
        _fail(value, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, sorted(unknown)))} "
                     f"for intstream {command} (known: {', '.join(known)})")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    ctx.meta["intstream.config_extra"] = passthrough
    ctx.meta["intstream.config_path"] = str(Path(value).absolute())
