"""The image itself, coarsely: block means over a grid (2-D images and whole volumes)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from medcls.features.hog import as_images, grey_float

__all__ = ["Thumbnail", "as_volumes"]


def as_volumes(X) -> np.ndarray:
    """``(N, D, H, W)`` or ``(N, C, D, H, W)`` -> float ``(N, D, H, W)`` grey in [0, 1]."""
    return grey_float(X, 3, "whole volumes (N, D, H, W) or (N, C, D, H, W)")


def _block_means(x: np.ndarray, cells: int) -> np.ndarray:
    """Mean over a ``cells`` grid per axis (edges that do not divide evenly are spread over the cells)."""
    for axis in range(1, x.ndim):
        n = x.shape[axis]
        k = min(cells, n)
        edges = np.linspace(0, n, k + 1).round().astype(int)
        x = np.add.reduceat(x, edges[:-1], axis=axis) / np.diff(edges).reshape(
            [-1 if a == axis else 1 for a in range(x.ndim)])
    return x.reshape(len(x), -1)


class Thumbnail(TransformerMixin, BaseEstimator):
    """Block means of the intensities on a ``cells``-per-side grid: what auto-sklearn's rows start from.

    Takes 2-D images (``cells`` x ``cells`` features) or whole volumes
    ``(N, C, D, H, W)`` (``cells_3d`` per axis). At 28 px, 14 cells are 2 x 2 px blocks; a 28-voxel
    cube gives 7 x 7 x 7 blocks of 4 voxels a side.
    """

    def __init__(self, cells: int = 14, cells_3d: int = 7):
        self.cells = cells
        self.cells_3d = cells_3d

    def _x(self, X):
        X = np.asarray(X)  # whole volumes come as (N, C, D, H, W); (N, C, H, W) is a batch of images
        return (as_volumes(X), self.cells_3d) if X.ndim == 5 else (as_images(X), self.cells)

    def fit(self, X, y=None):
        x, cells = self._x(X[:1])
        self.n_features_out_ = _block_means(x, cells).shape[1]
        return self

    def transform(self, X):
        x, cells = self._x(X)
        return _block_means(x.astype(np.float64), cells).astype(np.float32)
