"""Exceptions that the command line turns into one clear error line, and tomoqc's warnings."""

from __future__ import annotations

import os


class TomoqcError(Exception):
    """Base class for errors caused by the user's input or options (exit code 1)."""

    exit_code = 1


class InputError(TomoqcError):
    """A problem with a file or folder given by the user.

    ``str(err)`` reads ``"<path>: <problem>"`` so that the CLI prints one line naming
    both the file and what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)

    def __reduce__(self):
        # keep path and problem when the error crosses a process boundary (dask workers)
        return (self.__class__, (self.path, self.problem))


class OptionError(TomoqcError):
    """A bad command-line option or keyword argument."""


class QCFailed(TomoqcError):
    """A volume scored below the ``--fail-below`` threshold (exit code 3)."""

    exit_code = 3


class TomoqcWarning(UserWarning):
    """A warning the command line prints as one line, ``tomoqc: warning: ...``."""


class SecurityWarning(TomoqcWarning):
    """Something others could reach or read: TLS turned off, a dashboard on a public address."""
