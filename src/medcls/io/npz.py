"""MedMNIST-style ``.npz`` archives (2-D and 3-D, any size)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.meta import ImageMeta

__all__ = ["load_npz_splits", "read_npz", "SPLITS"]

SPLITS = ("train", "val", "test")


def load_npz_splits(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return ``{split: (images, labels)}`` from a MedMNIST ``.npz`` file.

    Raises:
        ReadError: not an npz archive, or no ``<split>_images`` / ``<split>_labels`` keys.
    """
    path = Path(path)
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
