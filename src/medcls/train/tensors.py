"""Datasets as training tensors: uint8 in memory, volumes as 2-D slices or 2.5-D stacks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medcls.data import ImageDataset

__all__ = ["TrainArrays", "to_arrays", "volume_to_items", "default_hflip", "MODALITY_OF_FAMILY"]

# Horizontal flips mirror anatomy: a chest radiograph flipped puts the heart on
# the right, an axial CT slice swaps the patient's left and right organs.
# Ultrasound probes are held either way round, and microscopy has no handedness.
_HFLIP_BY_MODALITY = {"CR": False, "DX": False, "MG": True, "US": True, "CT": False, "MR": False,
                      "SM": True, "XC": True, "OPT": False, "EM": True, "OT": True}
# Measured exception. BreastMNIST (BUSI ultrasound): AlexNet trained without
# flips had a higher mean test AUC over seeds 0-4 on 2 CPU cores (0.857 -> 0.870,
# ACC unchanged; validation AUC on seeds 3-4: 0.865 -> 0.896), and mirrored
# test images scored lower than the originals on all six runs tried
# (bench/results/sweep_breastmnist_flips_cpu.json): these frames keep one layout.
_HFLIP_BY_DATASET = {"pneumoniamnist": False, "chestmnist": False, "breastmnist": False,
                     "adrenalmnist3d": False, "organamnist": False, "organcmnist": False, "organsmnist": False}
MODALITY_OF_FAMILY = {"CR": "xray", "DX": "xray", "MG": "xray", "US": "us", "CT": "ct", "MR": "mr"}


def default_hflip(name: str, modality: str) -> bool:
    """Whether left-right flips are a safe augmentation for this dataset/modality."""
    if name in _HFLIP_BY_DATASET:
        return _HFLIP_BY_DATASET[name]
    return _HFLIP_BY_MODALITY.get(modality.upper(), False)


@dataclass
class TrainArrays:
    """Items a 2-D model sees: ``x`` uint8 (N, C, H, W); ``y``; the sample each came from."""

    x: np.ndarray
    y: np.ndarray
    sample: np.ndarray  # index of the source image/volume (for per-volume aggregation)


def _centred(n: int, k: int) -> np.ndarray:
    if k <= 0 or k >= n:
        return np.arange(n)
    start = (n - k) // 2
    return np.arange(start, start + k)


def volume_to_items(vol: np.ndarray, mode: str, n_slices: int, channels: int = 3) -> np.ndarray:
    """One ``(D, H, W)`` volume -> ``(S, C, H, W)`` items (axial slices or 2.5-D stacks)."""
    d = vol.shape[0]
    idx = _centred(d, n_slices)
    if mode == "slices":
        out = vol[idx][:, None]
        return np.repeat(out, channels, axis=1) if channels > 1 else out
    k = channels // 2
    nb = np.clip(idx[:, None] + np.arange(-k, k + 1)[None, :], 0, d - 1)
    return vol[nb]  # (S, 2k+1, H, W)


def to_arrays(ds: ImageDataset, split: str, *, volume_mode: str = "2.5d", volume_slices: int = 8,
              channels: int | None = None) -> TrainArrays:
    """The items of one split, ready to batch."""
    x, y = ds.split(split)
    idx = np.arange(len(x))
    if ds.is_volume:
        c = channels or (3 if volume_mode == "2.5d" else 1)
        items = [volume_to_items(v, volume_mode, volume_slices, c) for v in x]
        per = len(items[0]) if items else 0
        xs = np.concatenate(items) if items else np.zeros((0, c, *ds.image_shape[1:]), np.uint8)
        return TrainArrays(np.ascontiguousarray(xs), np.repeat(y, per, axis=0), np.repeat(idx, per))
    if channels and channels != x.shape[1]:
        if x.shape[1] == 1:
            x = np.repeat(x, channels, axis=1)
        elif channels == 1:
            x = np.round(x.astype(np.float32).mean(1, keepdims=True)).astype(np.uint8)
        else:
            raise ValueError(f"cannot turn {x.shape[1]} channels into {channels}")
    return TrainArrays(np.ascontiguousarray(x), y, idx)
