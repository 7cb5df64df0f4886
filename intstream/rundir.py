"""Run directories: what `fit -o DIR` may write into, and how.

A run directory is either new, empty, or an intstream run directory: one holding
``intstream-run.json`` (the marker), or only files fit itself writes (runs made before
the marker). Anything else is refused, as is a symbolic link for the directory or for
any file fit writes in it. While fit runs it holds the directory's exclusive lock
(``.intstream.lock``), so a second fit on the same directory exits 2 instead of both
writing. Every file is written to a temporary name in the directory and renamed into
place (the log is appended through a descriptor opened with ``O_NOFOLLOW``).

`resume_config` decides which options a ``--resume`` may change.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import errno
import functools
import json
import os
import signal
import time
import uuid
from pathlib import Path

from .atomic import OutputLock, lock_output, output_error, remove_path, remove_stale_temporaries
from .checkpoint import CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, TEACHER_MAP_NAME
from .errors import InputError, Interrupted

__all__ = ["MARKER_NAME", "LOCK_NAME", "RunDir", "guarded", "resume_config", "StopSignals",
           "RESUME_FROM_THIS_PROCESS", "RESUME_MAY_CHANGE"]

MARKER_NAME = "intstream-run.json"
LOCK_NAME = ".intstream.lock"
MARKER_FORMAT = "intstream-run"
OWN_FILES = (MARKER_NAME, CHECKPOINT_NAME, LOG_NAME, CONFIG_NAME, TEACHER_MAP_NAME)

_OPEN: contextvars.ContextVar[list | None] = contextvars.ContextVar("intstream_open_run_dirs", default=None)


def _is_own_temporary(name: str) -> bool:
    return any(name.startswith(f".{own}.tmp-") for own in OWN_FILES)


class RunDir:
    """A validated run directory; `open` creates and locks it, `close` releases it.

    Use inside a function decorated with `guarded`, which closes every run directory the
    call opened: on failure, one that holds no checkpoint is removed (or emptied of what
    this process wrote, when the directory was there before).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).absolute()
        self.created: Path | None = None  # top-most directory this process created
        self.lock: OutputLock | None = None
        self.written: set[str] = set()
        self.check()

    def check(self) -> None:
        """Refuse a symlink, a non-directory, or a foreign non-empty directory (no side effects)."""
        p = self.path
        if p.is_symlink():
            raise InputError(p, "run directory is a symbolic link (give the real directory)")
        if not p.exists():
            return
        if not p.is_dir():
            raise InputError(p, "exists and is not a directory")
        names = {n for n in os.listdir(p) if n != LOCK_NAME and not _is_own_temporary(n)}
        if names and MARKER_NAME not in names and not names <= set(OWN_FILES):
            raise InputError(p, f"is not empty and not an intstream run directory (no {MARKER_NAME}); "
                                "choose a new or empty -o")
        for name in OWN_FILES + (LOCK_NAME,):
            f = p / name
            if f.is_symlink():
                raise InputError(f, "is a symbolic link (refusing to write through it)")
            if f.exists() and not f.is_file():
                raise InputError(f, "is not a regular file")
        if MARKER_NAME in names:
            try:
                marker = json.loads((p / MARKER_NAME).read_text())
            except (OSError, ValueError):
                marker = None
            if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
                raise InputError(p / MARKER_NAME, "is not an intstream run marker")

    def open(self, **marker) -> "RunDir":
        """Create the directory if needed, take its lock, and write the marker."""
        p = self.path
        if not p.exists():
            top = p
            while not top.parent.exists():
                top = top.parent
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                os.mkdir(p)
                self.created = top
            except FileExistsError:
                pass  # another process made it first: the lock below decides
            except OSError as exc:
                raise output_error(exc, p) from None
        try:
            self.lock = lock_output(p, p / LOCK_NAME)
        except OSError:  # e.g. no room for the lock file: take back the empty directory we made
            if self.created is not None:
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise
        active = _OPEN.get()
        if active is not None:
            active.append(self)
        self.check()  # again, now that no other intstream process can change it
        for name in OWN_FILES:
            remove_stale_temporaries(p / name)
        if not (p / MARKER_NAME).exists():
            self.write_text(MARKER_NAME, json.dumps({"format": MARKER_FORMAT, "version": 1,
                                                     "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                     **marker}, indent=1, default=str) + "\n")
        return self

    def write_text(self, name: str, text: str) -> Path:
        """Write ``name`` in the run directory atomically (temporary + rename; never through a link)."""
        return self.write_bytes(name, text.encode())

    def write_bytes(self, name: str, data: bytes) -> Path:
        """`write_text` for bytes."""
        dest = self.path / name
        tmp = self.path / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise output_error(exc, dest) from None
        self.written.add(name)
        return dest

    def open_append(self, name: str):
        """Open ``name`` for appending text, refusing a symbolic link."""
        try:
            fd = os.open(self.path / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(self.path / name, "is a symbolic link (refusing to write through it)") from None
            raise output_error(exc, self.path / name) from None
        self.written.add(name)
        return _NamedFile(os.fdopen(fd, "a"), self.path / name)

    def truncate_log(self, step: int, name: str = LOG_NAME) -> None:
        """Drop log lines past ``step`` (the checkpoint being resumed: they will be redone).

        A torn last line (a kill or a full disk mid-write) ends the kept part.
        """
        path = self.path / name
        if not path.exists():
            return
        if step == 0:
            path.unlink()
            return
        keep = []
        for ln in path.read_text().splitlines():
            try:
                rec = json.loads(ln)
            except ValueError:
                break
            if rec["step"] <= step:
                keep.append(ln)
        self.write_text(name, "".join(ln + "\n" for ln in keep))

    def close(self, failed: bool = False) -> None:
        """Release the lock; after a failure with no checkpoint, leave nothing behind."""
        if self.lock is None:
            return
        try:
            if failed and not (self.path / CHECKPOINT_NAME).exists():
                if self.created is not None:
                    remove_path(self.path)
                    if self.created != self.path:  # parents made for it, while empty
                        for d in self.path.parents:
                            try:
                                d.rmdir()
                            except OSError:
                                break
                            if d == self.created:
                                break
                else:
                    for name in self.written:
                        remove_path(self.path / name)
        finally:
            if self.path.exists():
                self.lock.release()
            else:  # the directory (and the lock file in it) are gone
                os.close(self.lock.fd)
                self.lock.fd = None
            self.lock = None


class _NamedFile:
    """A text file whose write errors (disk full) name it, whatever the OS said."""

    def __init__(self, fh, path: Path):
        self._fh, self._path = fh, path

    def write(self, text: str) -> int:
        try:
            return self._fh.write(text)
        except OSError as exc:
            raise output_error(exc, self._path) from None

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            raise output_error(exc, self._path) from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:  # the write that failed already said so
            pass

    def __enter__(self) -> "_NamedFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def guarded(fn):
    """Close every `RunDir` that ``fn`` opens when it returns or raises (see `RunDir`)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        token = _OPEN.set([])
        failed = True
        try:
            result = fn(*args, **kwargs)
            failed = False
            return result
        finally:
            for rd in reversed(_OPEN.get()):
                rd.close(failed=failed)
            _OPEN.reset(token)

    return run


# Fields a resumed run takes from this process whatever was passed (a new allocation).
RESUME_FROM_THIS_PROCESS = ("time_budget", "checkpoint_every")
# Fields a resume may change when given explicitly; they do not change what is trained.
RESUME_MAY_CHANGE = ("target_psnr", "log_every", "device", "scheduler")
_OPTION_NAMES = {"omega0": "--omega", "first_omega0": "--first-omega"}


def option_name(field: str) -> str:
    return _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def _show(value) -> str:
    if value is None:
        return "default"
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def resume_config(saved, given, *, step: int, explicit=None, where=None):
    """The config a ``--resume`` continues with, or an `InputError` listing the differences.

    Parameters
    ----------
    saved
        The checkpoint's resolved `FitConfig`.
    given
        The config of this call.
    step
        Steps the checkpoint has done.
    explicit
        Field names the user set (the CLI passes those given on the command line); ``None``
        takes the fields of ``given`` that differ from the `FitConfig` defaults.

    Returns
    -------
    FitConfig
        ``saved`` with `RESUME_FROM_THIS_PROCESS` from ``given``, the explicit
        `RESUME_MAY_CHANGE` fields, and a larger ``steps`` when the saved run had finished
        (the extension then trains the extra steps; see `intstream.fit.fit`).
    """
    names = [f.name for f in dataclasses.fields(type(saved))]
    if explicit is None:
        default = type(saved)()
        explicit = {f for f in names if getattr(given, f) != getattr(default, f)}
    cfg = dataclasses.replace(saved, **{f: getattr(given, f) for f in RESUME_FROM_THIS_PROCESS})
    diffs = []
    for f in names:
        if f not in explicit or f in RESUME_FROM_THIS_PROCESS:
            continue
        new, old = getattr(given, f), getattr(saved, f)
        if f in RESUME_MAY_CHANGE:
            cfg = dataclasses.replace(cfg, **{f: new})
        elif new == old:
            continue
        elif f == "steps" and new is not None and old is not None and new > old and step >= old:
            cfg = dataclasses.replace(cfg, steps=new)  # extend a finished run
        else:
            why = " (only a finished run can be extended)" if f == "steps" and new is not None and old is not None and new > old else ""
            diffs.append(f"{option_name(f)} {_show(new)} (checkpoint: {_show(old)}){why}")
    if diffs:
        raise InputError(where, "--resume with options that differ from the checkpoint's: " + "; ".join(diffs)
                         + " (drop them, or start a new run with another -o or --overwrite)")
    return cfg


class StopSignals:
    """SIGTERM/SIGINT set a flag that a loop checks between units of work (`check`).

    A second signal interrupts at once. Only the main thread can install handlers;
    elsewhere this does nothing.
    """

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self) -> "StopSignals":
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def check(self) -> None:
        """Raise `Interrupted` if a signal arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
