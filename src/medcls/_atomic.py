"""Atomic file writes: write to a temp file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_open", "atomic_path", "write_json", "write_text"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import, while no other thread can be creating files.
_FILE_MODE = 0o666 & ~_read_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; on success it replaces ``path`` atomically.

    The temp file is fsynced before the rename and gets the permissions a plain
    ``open(path, "w")`` would (``0o666`` less the umask), not ``mkstemp``'s
    owner-only ``0o600``, so colleagues can read a shared run folder. On any
    exception the temp file is removed and ``path`` is left untouched, so readers
    never see a half-written file; a full disk or a refused write becomes a
    :class:`~medcls.errors.WriteError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except Exception as exc:
        err = _write_error(path, exc)
        if err is exc:
            raise
        raise err from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


_LOW_SPACE = 64 << 20


def _write_error(path: Path, exc: Exception) -> Exception:
    """A :class:`WriteError` when the failure is the file system's, else ``exc`` itself.

    Writers wrap a full disk in their own types (safetensors' ``SafetensorError``,
    torch's ``unexpected pos`` RuntimeError), so the free space is checked too.
    """
    from medcls.errors import MedclsError, WriteError

    if isinstance(exc, MedclsError):
        return exc
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(path.parent).free
        if free < _LOW_SPACE:
            return WriteError(path, f"no space left on the device ({free >> 20} MiB free in {path.parent}); "
                                    "free some space or write elsewhere")
    if isinstance(exc, OSError):
        return WriteError(path, exc.strerror or str(exc))
    return exc


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success it replaces ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
