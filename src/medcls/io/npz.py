"""MedMNIST-style ``.npz`` archives (2-D and 3-D, any size)."""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.limits import check_pixels, require_regular_file
from medcls.io.meta import ImageMeta

__all__ = ["load_npz_splits", "read_npz", "SPLITS"]

SPLITS = ("train", "val", "test")


def _memory_bytes() -> int | None:
    try:
        import os

        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _check_array_sizes(path: Path) -> None:
    """Each array's shape from its header, before loading: every image within the pixel budget, the
    whole archive within this machine's memory, and no array claiming more data than its member holds."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ReadError(path, f"not a readable .npz archive ({exc})") from exc
    total = 0
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError, TypeError, zlib.error,
                    tokenize.TokenError) as exc:  # numpy parses the header's dict with tokenize
                raise ReadError(path, f"{info.filename}: unreadable array header ({type(exc).__name__})") from exc
            n = int(np.prod(shape, dtype=np.float64))
            nbytes = n * dtype.itemsize
            if nbytes > info.file_size:
                raise ReadError(path, f"{info.filename}: its header claims {nbytes:,} bytes but it holds "
                                      f"{info.file_size:,}; truncated or forged")
            if len(shape) > 1:
                check_pixels(path, int(np.prod(shape[1:], dtype=np.float64)), f"each image of {info.filename}")
            total += nbytes
    memory = _memory_bytes()
    if memory and total > 0.8 * memory:
        raise ReadError(path, f"its arrays need {total / 2**30:.1f} GiB, more than this machine's memory "
                              f"({memory / 2**30:.1f} GiB) can hold")


def load_npz_splits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{split: (images, labels)}`` from a MedMNIST ``.npz`` file.

    Raises:
        ReadError: not an npz archive, or no ``<split>_images`` / ``<split>_labels`` keys.
    """
    path = Path(path)
    require_regular_file(path)
    _check_array_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            out = {}
            for s in SPLITS:
                if f"{s}_images" in keys:
                    if f"{s}_labels" not in keys:
                        raise ReadError(path, f"has {s}_images but no {s}_labels")
                    out[s] = (z[f"{s}_images"], z[f"{s}_labels"])
    except ReadError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ReadError(path, f"not a readable .npz archive ({exc})") from exc
    if not out:
        raise ReadError(path, f"no MedMNIST arrays (expected train_images/val_images/test_images; found {sorted(keys)})")
    for s, (x, y) in out.items():
        if len(x) != len(y):
            raise ReadError(path, f"{s}: {len(x)} images but {len(y)} labels")
    return out


def read_npz(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """All images of the archive stacked in split order (train, val, test)."""
    splits = load_npz_splits(path)
    arr = np.concatenate([x for x, _ in splits.values()])
    per = arr.shape[1:]
    is_vol = len(per) == 3 and per[-1] != 3
    return arr, ImageMeta(
        path=str(path),
        format="npz",
        modality="OT",
        shape=tuple(arr.shape),
        frames=int(arr.shape[0]),
        channels=3 if per[-1:] == (3,) else 1,
        bits=int(arr.dtype.itemsize * 8),
        is_volume=is_vol,
        extra={"splits": {s: int(len(x)) for s, (x, _) in splits.items()}},
    )
