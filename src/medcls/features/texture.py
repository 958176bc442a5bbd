"""Multi-scale texture: uniform LBP histograms at three radii and GLCM properties at three distances."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from medcls.features._parallel import map_items
from medcls.features.hog import as_images

__all__ = ["MultiScaleTexture"]

_PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)


def _one(img: np.ndarray, scales, distances, levels: int) -> np.ndarray:
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    parts = []
    for p, r in scales:  # rotation-invariant uniform patterns: p + 2 codes each
        lbp = local_binary_pattern(u8, p, r, method="uniform").astype(np.int64)
        parts.append(np.bincount(lbp.ravel(), minlength=p + 2)[: p + 2] / lbp.size)
    q = (u8.astype(np.uint16) * levels // 256).astype(np.uint8)
    glcm = graycomatrix(q, list(distances), list(_ANGLES), levels=levels, symmetric=True, normed=True)
    parts += [graycoprops(glcm, prop).mean(1) for prop in _PROPS]  # per distance, averaged over the angles
    return np.nan_to_num(np.concatenate(parts)).astype(np.float32)


class MultiScaleTexture(TransformerMixin, BaseEstimator):
    """Texture at several scales (Ojala et al. 2002; Haralick et al. 1973), with scikit-image.

    Uniform LBP histograms for each ``(points, radius)`` in ``scales`` and the six
    GLCM properties at each distance (averaged over 0, 45, 90, 135 degrees) on
    ``levels`` grey levels. ``stats`` has one LBP scale and one GLCM quantisation;
    this is its multi-scale companion (the textures of a 28 px ultrasound frame
    differ at 1, 2 and 3 px).
    """

    def __init__(self, scales=((8, 1), (16, 2), (24, 3)), distances=(1, 2, 3), levels: int = 16, n_jobs: int = -1):
        self.scales = scales
        self.distances = distances
        self.levels = levels
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        self.n_features_out_ = sum(p + 2 for p, _ in self.scales) + len(_PROPS) * len(self.distances)
        return self

    def transform(self, X):
        return map_items(_one, as_images(X), [tuple(s) for s in self.scales], tuple(self.distances), int(self.levels),
                         n_jobs=self.n_jobs, serial_below=256, per_chunk=128)
