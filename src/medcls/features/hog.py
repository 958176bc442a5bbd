"""Histogram of oriented gradients (Dalal & Triggs 2005) with scikit-image."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["HOGFeatures", "hog_batch", "as_images"]


def as_images(X) -> np.ndarray:
    """Accept ``(N, H, W)``, ``(N, C, H, W)`` or flattened square ``(N, H*W)`` -> float ``(N, H, W)`` grey."""
    X = np.asarray(X)
    if X.ndim == 2:
        side = int(round(np.sqrt(X.shape[1])))
        if side * side != X.shape[1]:
            raise ValueError(f"flat input of width {X.shape[1]} is not a square image")
        X = X.reshape(len(X), side, side)
    return grey_float(X, 2, "images (N, H, W) or (N, C, H, W)")


def grey_float(X, spatial: int, what: str) -> np.ndarray:
    """``(N, *S)`` or ``(N, C, *S)`` with ``spatial`` axes in S -> float32 grey ``(N, *S)``, uint8 scaled to [0, 1]."""
    X = np.asarray(X)
    if X.ndim == spatial + 2:
        X = X.mean(1) if X.shape[1] > 1 else X[:, 0]
    if X.ndim != spatial + 1:
        raise ValueError(f"expected {what}, got shape {X.shape}")
    X = X.astype(np.float32)
    return X / 255.0 if X.max() > 1.5 else X


def hog_batch(imgs: np.ndarray, orientations: int = 9, pixels_per_cell: tuple[int, int] = (8, 8),
              cells_per_block: tuple[int, int] = (2, 2), block_norm: str = "L2-Hys") -> np.ndarray:
    """HOG of a batch of grey images ``(N, H, W)``, vectorised over the batch.

    Reproduces ``skimage.feature.hog(img, ..., feature_vector=True)`` image by
    image (same gradients, the same hard orientation binning, cell tiling and
    block normalisation) without a Python loop per image.
    """
    x = np.asarray(imgs)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    n, h, w = x.shape
    g_row = np.zeros_like(x)
    g_col = np.zeros_like(x)
    g_row[:, 1:-1] = x[:, 2:] - x[:, :-2]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    cr, cc = pixels_per_cell
    br, bc = cells_per_block
    ncr, ncc = h // cr, w // cc
    nbr, nbc = ncr - br + 1, ncc - bc + 1
    if nbr <= 0 or nbc <= 0:
        raise ValueError(f"images of {h}x{w} px are too small for {cr}x{cc} px cells in {br}x{bc} blocks")
    gr = g_row[:, : ncr * cr, : ncc * cc].astype(np.float64)
    gc = g_col[:, : ncr * cr, : ncc * cc].astype(np.float64)
    mag = np.hypot(gc, gr)
    ori = np.rad2deg(np.arctan2(gr, gc)) % 180
    # skimage counts a pixel in bin i when 180/n * i <= o < 180/n * (i + 1), comparing
    # against these edges; searchsorted(side="right") makes exactly those comparisons.
    edges = (180.0 / orientations) * np.arange(1, orientations + 1)
    b = np.minimum(np.searchsorted(edges, ori, side="right"), orientations - 1)
    cell = (np.arange(ncr * cr) // cr)[:, None] * ncc + (np.arange(ncc * cc) // cc)[None, :]
    idx = (np.arange(n)[:, None, None] * (ncr * ncc) + cell[None]) * orientations + b
    hist = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=n * ncr * ncc * orientations)
    hist = hist.reshape(n, ncr, ncc, orientations) / (cr * cc)
    from numpy.lib.stride_tricks import sliding_window_view

    blocks = sliding_window_view(hist, (br, bc), axis=(1, 2))  # (n, nbr, nbc, orient, br, bc)
    blocks = np.moveaxis(blocks, 3, -1)  # (n, nbr, nbc, br, bc, orient)
    eps = 1e-5
    axes = (3, 4, 5)
    if block_norm == "L1":
        out = blocks / (np.abs(blocks).sum(axes, keepdims=True) + eps)
    elif block_norm == "L1-sqrt":
        out = np.sqrt(blocks / (np.abs(blocks).sum(axes, keepdims=True) + eps))
    elif block_norm == "L2":
        out = blocks / np.sqrt((blocks**2).sum(axes, keepdims=True) + eps**2)
    elif block_norm == "L2-Hys":
        out = blocks / np.sqrt((blocks**2).sum(axes, keepdims=True) + eps**2)
        out = np.minimum(out, 0.2)
        out = out / np.sqrt((out**2).sum(axes, keepdims=True) + eps**2)
    else:
        raise ValueError(f"unknown block_norm {block_norm!r}")
    return out.reshape(n, -1).astype(np.float32)


class HOGFeatures(TransformerMixin, BaseEstimator):
    """HOG descriptor per image, equal to scikit-image's ``hog`` and computed for a whole batch at once.

    Args:
        orientations: gradient orientation bins.
        pixels_per_cell: cell size; ``None`` picks about 4 x 4 cells per side
            (7 px at 28 px, 16 px at 64 px, 56 px at 224 px).
        cells_per_block: block size in cells (block normalisation).
        block_norm: scikit-image's block normalisation.
        n_jobs: threads over chunks of 1,024 images (NumPy releases the GIL).
    """

    def __init__(self, orientations: int = 9, pixels_per_cell: int | None = None, cells_per_block: int = 2,
                 block_norm: str = "L2-Hys", n_jobs: int = -1):
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.n_jobs = n_jobs

    def _ppc(self, shape) -> tuple[int, int]:
        p = self.pixels_per_cell or max(4, min(shape) // 4)
        return (p, p)

    def _args(self, shape):
        return self.orientations, self._ppc(shape), (self.cells_per_block,) * 2, self.block_norm

    def fit(self, X, y=None):
        imgs = as_images(X[:1])
        self.image_shape_ = imgs.shape[1:]
        self.n_features_out_ = hog_batch(imgs, *self._args(imgs.shape[1:])).shape[1]
        return self

    def transform(self, X):
        imgs = as_images(X)
        args = self._args(imgs.shape[1:])
        if len(imgs) <= 1024 or self.n_jobs == 1:
            return hog_batch(imgs, *args)
        from joblib import Parallel, delayed

        chunks = np.array_split(np.arange(len(imgs)), int(np.ceil(len(imgs) / 1024)))
        parts = Parallel(n_jobs=self.n_jobs, prefer="threads")(delayed(hog_batch)(imgs[c], *args) for c in chunks)
        return np.concatenate(parts)
