"""Errors a person can act on.

Every error meant for the user derives from :class:`MedclsError`; the CLI prints
its message on one line and exits with code 2. Library-internal failures keep
their own type so a ``--debug`` traceback points at the real cause.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedclsError", "ReadError", "DataError", "ModelError"]


class MedclsError(Exception):
    """Base class for errors caused by the user's input, not by a bug."""

    exit_code = 2


class ReadError(MedclsError):
    """A file or folder could not be read as an image."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(f"{self.path}: {problem}")


class DataError(MedclsError):
    """A dataset (folder, manifest, MedMNIST name) is unusable."""


class ModelError(MedclsError):
    """An unknown model name or impossible model configuration."""
