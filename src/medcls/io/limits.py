"""Limits that keep a hostile or broken file from taking the machine, checked before the work.

* **Only regular files are opened**: a FIFO, device or socket named ``*.dcm`` would
  block a reader forever or stream without end.
* **A pixel budget**: an image (all its frames and samples) or a volume may hold
  at most :func:`max_pixels` values, checked from its header before anything is
  decoded. The default, 2**28 (268 million, a 16384 x 16384 image; 1 GiB as
  float32), is ten times a full-field digital mammogram and holds a CT series of
  a thousand 512 x 512 slices; a 6 KB file declaring 20000 x 20000 pixels is
  refused in a millisecond instead of taking 3.5 GB. ``MEDCLS_MAX_PIXELS`` (or
  ``medcls --max-pixels N``) raises it for users with real giant images.
* **Bounded decompression**: a deflated DICOM data set or a NIfTI header's
  extensions may not inflate beyond the budget either.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Iterator

from medcls.errors import LimitError, MedclsError, ReadError

__all__ = ["DEFAULT_MAX_PIXELS", "ENV_MAX_PIXELS", "max_pixels", "pixel_limit", "check_pixels", "require_regular_file",
           "not_regular_reason"]

DEFAULT_MAX_PIXELS = 2**28
ENV_MAX_PIXELS = "MEDCLS_MAX_PIXELS"
_override: list[int] = []


def max_pixels() -> int:
    """The pixel budget in force: :func:`pixel_limit`'s, else ``$MEDCLS_MAX_PIXELS``, else the default."""
    if _override:
        return _override[-1]
    env = os.environ.get(ENV_MAX_PIXELS)
    if env:
        try:
            n = int(float(env))
        except ValueError:
            raise MedclsError(f"{ENV_MAX_PIXELS} must be a number of pixel values, not {env!r}") from None
        if n < 1:
            raise MedclsError(f"{ENV_MAX_PIXELS} must be at least 1, got {env}")
        return n
    return DEFAULT_MAX_PIXELS


@contextlib.contextmanager
def pixel_limit(n: int) -> Iterator[None]:
    """Use ``n`` as the pixel budget within the block."""
    if n < 1:
        raise MedclsError(f"--max-pixels must be at least 1, got {n}")
    _override.append(int(n))
    try:
        yield
    finally:
        _override.pop()


def check_pixels(path: str | Path, values: int, what: str) -> None:
    """Refuse before decoding when ``values`` (rows x columns x frames x samples) exceed the budget."""
    limit = max_pixels()
    if values > limit:
        raise LimitError(path, f"{what} would decode to {values:,} pixel values, more than the limit of {limit:,}; "
                              f"raise it with {ENV_MAX_PIXELS} or `medcls --max-pixels N` if the image is real")


def not_regular_reason(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file to read (None when it is one); follows symbolic links."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file or folder"
    except OSError as exc:  # a symbolic link loop, no permission...
        return f"cannot open ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{kind}, not a regular file; only regular files are read"


def require_regular_file(path: str | Path) -> None:
    """Raise :class:`ReadError` unless ``path`` is a regular file (never opens it)."""
    why = not_regular_reason(path)
    if why is not None:
        raise ReadError(path, why)
