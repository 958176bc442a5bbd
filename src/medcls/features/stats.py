"""Cheap intensity and texture statistics: histogram moments, LBP and GLCM (scikit-image)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from medcls.features._parallel import map_items
from medcls.features.hog import as_images

__all__ = ["IntensityTexture"]

_GLCM_PROPS = ("contrast", "homogeneity", "energy", "correlation")


def _one(img: np.ndarray, lbp_points: int, lbp_radius: float) -> np.ndarray:
    from scipy.stats import kurtosis, skew
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    v = img.ravel().astype(np.float64)
    moments = [v.mean(), v.std(), skew(v) if v.std() > 0 else 0.0, kurtosis(v) if v.std() > 0 else 0.0,
               *np.percentile(v, [5, 25, 50, 75, 95])]
    hist = np.histogram(v, bins=16, range=(0, 1))[0] / v.size
    lbp = local_binary_pattern(u8, lbp_points, lbp_radius, method="uniform")
    lbp_hist = np.bincount(lbp.astype(int).ravel(), minlength=lbp_points + 2)[: lbp_points + 2] / lbp.size
    q = (u8 // 8).astype(np.uint8)  # 32 grey levels
    glcm = graycomatrix(q, [1, 2], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    tex = [graycoprops(glcm, p).mean() for p in _GLCM_PROPS]
    return np.nan_to_num(np.concatenate([moments, hist, lbp_hist, tex])).astype(np.float32)


class IntensityTexture(TransformerMixin, BaseEstimator):
    """Histogram moments and a 16-bin histogram, a uniform-LBP histogram, and GLCM properties."""

    def __init__(self, lbp_points: int = 8, lbp_radius: float = 1.0, n_jobs: int = -1):
        self.lbp_points = lbp_points
        self.lbp_radius = lbp_radius
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        self.n_features_out_ = 9 + 16 + self.lbp_points + 2 + len(_GLCM_PROPS)
        return self

    def transform(self, X):
        return map_items(_one, as_images(X), self.lbp_points, self.lbp_radius, n_jobs=self.n_jobs, serial_below=256,
                         per_chunk=128)
