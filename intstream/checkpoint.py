"""Self-describing, atomically written training checkpoints.

A checkpoint holds everything to resume bit-identically and to export without the
store: model arguments and weights, optimiser and LR-schedule state, the step, every RNG
state, the resolved fit config, the teacher's state and a reference to the store (path,
source checksum and its full metadata, normalisation included).

Layout of a run directory::

    RUN_DIR/checkpoint.pt   the latest checkpoint (torch.save of plain containers and tensors;
                            loaded with ``weights_only=True``, so no pickle code runs)
    RUN_DIR/log.jsonl       one JSON object per logged step
    RUN_DIR/config.json     the resolved fit config
"""

from __future__ import annotations

import os
from pathlib import Path

from .atomic import atomic_output
from .errors import InputError

__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "CONFIG_NAME", "save_checkpoint", "load_checkpoint", "find_checkpoint"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
# Where the teacher sampled (`Teacher.sample_map`), written at the end of fit for eval --plot.
TEACHER_MAP_NAME = "teacher_map.npz"
FORMAT = "intstream-checkpoint"
VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    import torch

    path = Path(path)
    # The run directory's lock (`intstream.rundir`) already excludes other writers.
    with atomic_output(path, lock=False) as tmp:
        # O_EXCL | O_NOFOLLOW: never write through a link planted at the temporary name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            sink = _Sink(fh)
            try:
                torch.save({"format": FORMAT, "version": VERSION, **state}, sink)
            except RuntimeError:
                # torch's zip writer reports a failed write (disk full) as an opaque
                # RuntimeError: raise the OS error underneath (atomic_output names the path).
                if sink.error is not None:
                    raise sink.error from None
                raise
            fh.flush()
            os.fsync(fh.fileno())
    return path


class _Sink:
    """A binary file for `torch.save` that remembers the OS error a write raised."""

    def __init__(self, fh):
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file from a run directory or a checkpoint path."""
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise InputError(path, "no checkpoint found (expected a run directory or a checkpoint.pt)")
    return p


def load_checkpoint(path: str | os.PathLike, *, map_location: str = "cpu") -> dict:
    """Load a checkpoint (run dir or file) without executing pickled code."""
    import torch

    p = find_checkpoint(path)
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(p, f"corrupt or truncated checkpoint ({exc.__class__.__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise InputError(p, "not an intstream checkpoint")
    if ck.get("version", 0) > VERSION:
        raise InputError(p, f"checkpoint version {ck.get('version')} is newer than this intstream")
    return ck
