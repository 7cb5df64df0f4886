"""Write artifacts under a temporary name and rename them into place when complete.

A killed or failed stage leaves either the previous artifact or nothing, never a
half-written one. Two processes writing the same output cannot both succeed: the
writer holds an exclusive lock (`lock_output`) and re-checks at the final rename.
Temporaries are named ``.<name>.tmp-<pid>-<random>`` next to the output, so a later
writer of the same output recognises and removes the ones a ``kill -9`` left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import InputError

__all__ = ["atomic_output", "check_output_path", "remove_path", "lock_output", "OutputLock",
           "remove_stale_temporaries", "output_error"]


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
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise InputError(out, "output exists (pass --overwrite to replace it)")
    if not out.parent.exists():
        raise InputError(out, f"output folder {out.parent} does not exist")
    return out


# Errors about where the output goes, whatever file the library named.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def output_error(exc: OSError, out: str | os.PathLike) -> OSError:
    """The same OS error, naming the output the user asked for instead of a temporary."""
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(out))


class OutputLock:
    """An exclusive `fcntl.flock` on a lock file, held until `release` (which removes the file)."""

    def __init__(self, fd: int, path: Path):
        self.fd = fd
        self.path = path

    def release(self) -> None:
        if self.fd is None:
            return
        # Unlink while still holding the lock: a process that opened the old file fails
        # its same-inode check in `lock_output` and retries on a fresh one.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_output(out: str | os.PathLike, lock_path: str | os.PathLike | None = None) -> OutputLock:
    """Take the exclusive, non-blocking writer lock of ``out``.

    The lock file is ``lock_path`` (default ``.<name>.lock`` next to ``out``). A second
    writer gets an `InputError` (exit 2) saying that another process is writing ``out``.
    """
    out = Path(out).absolute()
    lock_path = Path(lock_path) if lock_path is not None else out.with_name(f".{out.name}.lock")
    for _ in range(100):
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputError(lock_path, "is a symbolic link (refusing to write through it)") from None
            raise output_error(exc, out) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(out, "another intstream process is writing it") from None
        try:
            same = os.stat(lock_path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return OutputLock(fd, lock_path)
        os.close(fd)  # the holder released and removed it between our open and our flock
    raise InputError(out, "could not take the writer lock (lock file keeps changing)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings of ``out`` left by dead writers.

    Call it holding ``out``'s lock: every writer of ``out`` locks it, so a temporary whose
    process is gone (or that has no pid in its name) is garbage. A ``.old-`` copy is only
    removed when ``out`` itself exists (otherwise it is the sole copy of a replaced output).
    """
    out = Path(out).absolute()
    removed = []
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return removed
    for p in siblings:
        name = p.name
        for kind in ("tmp", "old"):
            prefix = f".{out.name}.{kind}-"
            if not name.startswith(prefix):
                continue
            pid = name[len(prefix):].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue
            if pid.isdigit() and int(pid) == os.getpid():
                continue
            if kind == "old" and not out.exists():
                continue
            remove_path(p)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike, *, overwrite: bool = True, lock: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``out`` if the block succeeds.

    The temporary name sits in the same folder (same file system, so the rename is
    atomic for files). An existing ``out`` is replaced only after the new one is
    complete, and only with ``overwrite``: otherwise an ``out`` that appeared meanwhile
    is an `InputError`. With ``lock`` the writer holds ``out``'s lock throughout (a
    concurrent writer gets exit 2) and first removes stale temporaries of ``out``. On any
    exception (KeyboardInterrupt included) the temporary is removed; an OS error (disk
    full, read-only) is re-raised naming ``out``, not the temporary.
    """
    out = Path(out).absolute()
    held = None
    if lock:
        held = lock_output(out)
        remove_stale_temporaries(out)
        if not overwrite and (out.exists() or out.is_symlink()):
            held.release()
            raise InputError(out, "output exists (pass --overwrite to replace it)")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if not overwrite:
            _publish_new(tmp, out)
        elif out.is_dir() and not out.is_symlink():
            # Directories cannot be replaced atomically: move the old one aside first.
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(out, old)
            os.replace(tmp, out)
            remove_path(old)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        remove_path(tmp)
        name = os.fspath(exc.filename) if exc.filename else ""
        if not name or name.startswith(str(tmp)) or name == str(out) or exc.errno in _OUTPUT_ERRNOS:
            raise output_error(exc, out) from None
        raise
    except BaseException:
        remove_path(tmp)
        raise
    finally:
        if held is not None:
            held.release()


def _publish_new(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` onto ``out`` only if nothing is at ``out`` (no clobbering)."""
    if tmp.is_dir():
        if out.exists() or out.is_symlink():
            raise InputError(out, "output appeared while it was being written (another process wrote it)")
        os.rename(tmp, out)  # fails on a non-empty directory that appeared in between
        return
    try:
        os.link(tmp, out)  # atomic: fails if out exists
    except FileExistsError:
        raise InputError(out, "output appeared while it was being written (another process wrote it)") from None
    except OSError:  # file systems without hard links
        if out.exists() or out.is_symlink():
            raise InputError(out, "output appeared while it was being written (another process wrote it)") from None
        os.replace(tmp, out)
        return
    tmp.unlink()
