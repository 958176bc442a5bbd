"""A dataset split as the items a model sees: uint8 ``(N, C, H, W)`` (or ``(N, C, D, H, W)``) in memory.

Images are items as they are. Volumes become slices, or 2.5-D stacks (each
slice with its neighbours as channels), and every item remembers the sample it
came from, so a volume's prediction can be the mean over its slices; for the
ACS and 3-D networks (``acs`` / ``3d``) each volume is one item of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcls.data.dataset import ImageDataset

__all__ = ["Items", "to_items", "volume_to_items", "merge_items", "subset_items"]


@dataclass
class Items:
    """Items a model sees: ``x`` uint8 (N, C, H, W), or (N, C, D, H, W) for whole volumes; ``y``; their samples."""

    x: np.ndarray
    y: np.ndarray
    sample: np.ndarray  # index of the source image/volume (for per-volume aggregation)

    def __len__(self) -> int:
        return len(self.y)


def _centred(n: int, k: int) -> np.ndarray:
    if k <= 0 or k >= n:
        return np.arange(n)
    start = (n - k) // 2
    return np.arange(start, start + k)


def volume_to_items(vol: np.ndarray, mode: str, n_slices: int, channels: int = 3, axis: int = 0) -> np.ndarray:
    """One ``(D, H, W)`` volume -> ``(S, C, H, W)`` items: the ``n_slices`` central slices along ``axis``
    (0 axial, 1 coronal, 2 sagittal), one per item, or as 2.5-D stacks with their neighbours."""
    vol = np.moveaxis(vol, axis, 0) if axis else vol
    d = vol.shape[0]
    idx = _centred(d, n_slices)
    if mode == "slices":
        out = vol[idx][:, None]
        return np.repeat(out, channels, axis=1) if channels > 1 else out
    k = channels // 2
    nb = np.clip(idx[:, None] + np.arange(-k, k + 1)[None, :], 0, d - 1)
    return vol[nb]  # (S, 2k+1, H, W)


def to_items(ds: ImageDataset, split: str, *, volume_mode: str = "2.5d", volume_slices: int = 8,
             channels: int | None = None, volume_axis: int = 0) -> Items:
    """The items of one split, ready to batch."""
    x, y = ds.split(split)
    idx = np.arange(len(x))
    if ds.is_volume and volume_mode in ("acs", "3d"):  # MedMNIST3D: each volume one item
        c = channels or 1
        xs = np.repeat(x[:, None], c, axis=1) if c > 1 else x[:, None]
        return Items(np.ascontiguousarray(xs), y, idx)
    if ds.is_volume:
        c = channels or (3 if volume_mode == "2.5d" else 1)
        items = [volume_to_items(v, volume_mode, volume_slices, c, volume_axis) for v in x]
        per = len(items[0]) if items else 0
        xs = np.concatenate(items) if items else np.zeros((0, c, *ds.image_shape[1:]), np.uint8)
        return Items(np.ascontiguousarray(xs), np.repeat(y, per, axis=0), np.repeat(idx, per))
    if channels and channels != x.shape[1]:
        if x.shape[1] == 1:
            x = np.repeat(x, channels, axis=1)
        elif channels == 1:
            x = np.round(x.astype(np.float32).mean(1, keepdims=True)).astype(np.uint8)
        else:
            raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")
    return Items(np.ascontiguousarray(x), y, idx)


def merge_items(a: Items, b: Items) -> Items:
    """``a`` then ``b``, with ``b``'s samples numbered after ``a``'s (train + validation, for a refit)."""
    offset = int(a.sample.max()) + 1 if len(a) else 0
    return Items(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), np.concatenate([a.sample, b.sample + offset]))


def subset_items(a: Items, n: int | None, seed: int) -> Items:
    """A random ``n`` of the items in their original order (all of them when ``n`` is None or larger)."""
    if not n or len(a.y) <= n:
        return a
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(a.y), n, replace=False))
    return Items(a.x[idx], a.y[idx], a.sample[idx])
