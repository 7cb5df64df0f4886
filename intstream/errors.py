"""Errors that the CLI turns into exit codes.

`InputError` is bad usage or bad input (exit 2): the message is one line naming the
file and what is wrong with it. Anything else escaping a stage is a runtime failure
(exit 1).
"""

from __future__ import annotations

import os

__all__ = ["InputError", "Interrupted"]


class InputError(Exception):
    """A bad input file or argument; the CLI exits with code 2.

    Parameters
    ----------
    path
        The file or store the problem is about (``None`` when it is an option).
    problem
        What is wrong, in a few words, without a trailing period.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(self.message)

    def __reduce__(self):  # picklable: Dask process/distributed workers send it back to fit
        return (self.__class__, (self.path, self.problem))

    @property
    def message(self) -> str:
        return self.problem if self.path is None else f"{self.path}: {self.problem}"


class Interrupted(KeyboardInterrupt):
    """A stage stopped by SIGTERM/SIGINT; the CLI exits with ``128 + signum`` (143, 130)."""

    def __init__(self, signum: int):
        import signal

        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(signal.Signals(self.signum).name)

    def __reduce__(self):
        return (self.__class__, (self.signum,))
