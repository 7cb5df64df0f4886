"""Write artifacts under a temporary name and rename them into place when complete.

A killed or failed stage leaves either the previous artifact or nothing, never a
half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import InputError

__all__ = ["atomic_output", "check_output_path", "remove_path"]


def remove_path(path: Path) -> None:
    """Remove a file or a directory tree; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def check_output_path(
    out: str | os.PathLike, *, overwrite: bool, inputs: tuple[str | os.PathLike, ...] = ()
) -> Path:
    """Refuse an output that exists (without overwrite) or that lies inside an input.

    Returns the output as an absolute `Path`.
    """
    out = Path(out).absolute()
    for src in inputs:
        src = Path(src).absolute()
        if out == src or src in out.parents:
            raise InputError(out, f"output would be written inside the input {src}")
    if out.exists() and not overwrite:
        raise InputError(out, "output exists (pass --overwrite to replace it)")
    if not out.parent.exists():
        raise InputError(out, f"output folder {out.parent} does not exist")
    return out


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``out`` if the block succeeds.

    The temporary name sits in the same folder (same file system, so the rename is
    atomic for files). An existing ``out`` is replaced only after the new one is
    complete. On any exception (KeyboardInterrupt included) the temporary is removed.
    """
    out = Path(out).absolute()
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if out.is_dir() and not out.is_symlink():
            # Directories cannot be replaced atomically: move the old one aside first.
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            remove_path(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        remove_path(tmp)
        raise
