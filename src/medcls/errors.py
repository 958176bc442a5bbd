"""Errors a person can act on.

Every error meant for the user derives from :class:`MedclsError`; the CLI prints
its message on one line and exits with code 2. Library-internal failures keep
their own type so a ``--debug`` traceback points at the real cause.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedclsError", "ReadError", "UnsupportedFileError", "LimitError", "WriteError", "DataError", "ModelError", "TrainingStopped"]


class MedclsError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""

    exit_code = 2


class _FileError(MedclsError):
    """A problem with one file: keeps ``path`` and a one-line ``problem`` for callers that list failures."""

    _message = "{path}: {problem}"

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self._message.format(path=self.path, problem=self.problem))


class ReadError(_FileError):
    """A file or folder could not be read as an image."""


class UnsupportedFileError(ReadError):
    """A file of a kind medcls does not read (not DICOM, NIfTI, PNG/JPEG/TIFF or .npz)."""


class LimitError(ReadError):
    """A file would decode beyond medcls's memory limits: a decompression bomb, or an image beyond the budget."""


class WriteError(_FileError):
    """An output file could not be written (disk full, no permission, ...); the old file, if any, is intact."""

    _message = "cannot write {path}: {problem}"


class DataError(MedclsError):
    """A dataset (folder, manifest, MedMNIST name) is unusable."""


class ModelError(MedclsError):
    """An unknown model name or impossible model configuration."""


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C, SIGTERM) after writing a checkpoint to resume from.

    A ``KeyboardInterrupt``, so code that catches one still does; the CLI prints the
    message (which says how to resume) and exits with 128 + the signal number.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
