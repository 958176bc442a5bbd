"""Histogram of oriented gradients (Dalal & Triggs 2005) with scikit-image."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["HOGFeatures", "as_images"]


def as_images(X) -> np.ndarray:
    """Accept ``(N, H, W)``, ``(N, C, H, W)`` or flattened square ``(N, H*W)`` -> float ``(N, H, W)`` grey."""
    X = np.asarray(X)
    if X.ndim == 2:
        side = int(round(np.sqrt(X.shape[1])))
        if side * side != X.shape[1]:
            raise ValueError(f"flat input of width {X.shape[1]} is not a square image")
        X = X.reshape(len(X), side, side)
    if X.ndim == 4:
        X = X.mean(1) if X.shape[1] > 1 else X[:, 0]
    if X.ndim != 3:
        raise ValueError(f"expected images (N, H, W) or (N, C, H, W), got shape {X.shape}")
    X = X.astype(np.float32)
    return X / 255.0 if X.max() > 1.5 else X


def _hog_one(img, orientations, ppc, cpb, block_norm):
    from skimage.feature import hog

    return hog(img, orientations=orientations, pixels_per_cell=ppc, cells_per_block=cpb,
               block_norm=block_norm, feature_vector=True).astype(np.float32)


class HOGFeatures(TransformerMixin, BaseEstimator):
    """HOG descriptor per image.

    Args:
        orientations: gradient orientation bins.
        pixels_per_cell: cell size; ``None`` picks about 4 x 4 cells per side
            (7 px at 28 px, 16 px at 64 px, 56 px at 224 px).
        cells_per_block: block size in cells (block normalisation).
        block_norm: scikit-image's block normalisation.
        n_jobs: joblib workers; images are processed in chunks per worker.
    """

    def __init__(self, orientations: int = 9, pixels_per_cell: int | None = None, cells_per_block: int = 2,
                 block_norm: str = "L2-Hys", n_jobs: int = -1):
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        imgs = as_images(X[:1])
        self.image_shape_ = imgs.shape[1:]
        self.n_features_out_ = len(self._one(imgs[0]))
        return self

    def _ppc(self, shape) -> tuple[int, int]:
        p = self.pixels_per_cell or max(4, min(shape) // 4)
        return (p, p)

    def _one(self, img):
        return _hog_one(img, self.orientations, self._ppc(img.shape), (self.cells_per_block,) * 2, self.block_norm)

    def transform(self, X):
        from joblib import Parallel, delayed

        imgs = as_images(X)
        args = (self.orientations, self._ppc(imgs.shape[1:]), (self.cells_per_block,) * 2, self.block_norm)
        if len(imgs) < 256 or self.n_jobs == 1:
            return np.stack([_hog_one(i, *args) for i in imgs])
        chunks = np.array_split(np.arange(len(imgs)), max(1, min(len(imgs) // 128, 64)))
        parts = Parallel(n_jobs=self.n_jobs)(delayed(_hog_chunk)(imgs[c], args) for c in chunks)
        return np.concatenate(parts)


def _hog_chunk(imgs, args):
    return np.stack([_hog_one(i, *args) for i in imgs])
