"""SIFT bag of visual words (Lowe 2004; Csurka et al. 2004) with OpenCV and k-means."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from medcls.features.hog import as_images

__all__ = ["SIFTBoVW"]


def _u8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _descriptors(img: np.ndarray, dense: bool, step: int, patch: float) -> tuple[np.ndarray, np.ndarray]:
    """SIFT descriptors and their (row, col) positions relative to the image size."""
    import cv2

    sift = cv2.SIFT_create()
    u8 = _u8(img)
    h, w = u8.shape
    if dense:
        kps = [cv2.KeyPoint(float(x), float(y), patch) for y in range(step // 2, h, step)
               for x in range(step // 2, w, step)]
        kps, desc = sift.compute(u8, kps)
    else:
        kps, desc = sift.detectAndCompute(u8, None)
    if desc is None or len(kps) == 0:
        return np.zeros((0, 128), np.float32), np.zeros((0, 2), np.float32)
    pos = np.array([[k.pt[1] / h, k.pt[0] / w] for k in kps], np.float32)
    return desc.astype(np.float32), pos


class SIFTBoVW(TransformerMixin, BaseEstimator):
    """Bag of visual words over SIFT descriptors.

    Args:
        n_words: codebook size (MiniBatchKMeans, fit on the training images only).
        dense: ``"auto"`` uses a dense grid below 96 px (keypoint detection finds
            almost nothing on 28 px images) and detected keypoints above.
        step: grid step in px for dense SIFT (``None``: about 7 x 7 points per image).
        pyramid: spatial pyramid levels (0: one histogram; 1: + 2 x 2 cells).
        max_descriptors: descriptors sampled to fit the codebook.
    """

    def __init__(self, n_words: int = 64, dense: str | bool = "auto", step: int | None = None, pyramid: int = 1,
                 max_descriptors: int = 50_000, random_state: int = 0, n_jobs: int = -1):
        self.n_words = n_words
        self.dense = dense
        self.step = step
        self.pyramid = pyramid
        self.max_descriptors = max_descriptors
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _params(self, shape):
        dense = (min(shape) < 96) if self.dense == "auto" else bool(self.dense)
        step = self.step or max(3, min(shape) // 7)
        return dense, step, float(max(4, step * 1.5))

    def _all_descriptors(self, imgs):
        from joblib import Parallel, delayed

        dense, step, patch = self._params(imgs.shape[1:])
        if len(imgs) < 256 or self.n_jobs == 1:
            return [_descriptors(i, dense, step, patch) for i in imgs]
        chunks = np.array_split(np.arange(len(imgs)), max(1, min(len(imgs) // 128, 64)))
        parts = Parallel(n_jobs=self.n_jobs)(delayed(_chunk)(imgs[c], dense, step, patch) for c in chunks)
        return [d for p in parts for d in p]

    def fit(self, X, y=None):
        from sklearn.cluster import MiniBatchKMeans

        imgs = as_images(X)
        descs = [d for d, _ in self._all_descriptors(imgs)]
        allv = np.concatenate([d for d in descs if len(d)]) if any(len(d) for d in descs) else np.zeros((1, 128))
        rng = np.random.default_rng(self.random_state)
        if len(allv) > self.max_descriptors:
            allv = allv[rng.choice(len(allv), self.max_descriptors, replace=False)]
        k = min(self.n_words, len(allv))
        self.codebook_ = MiniBatchKMeans(k, random_state=self.random_state, n_init=3, batch_size=4096).fit(allv)
        self.n_features_out_ = k * sum(4**lvl for lvl in range(self.pyramid + 1))
        return self

    def transform(self, X):
        imgs = as_images(X)
        k = self.codebook_.n_clusters
        out = np.zeros((len(imgs), self.n_features_out_), np.float32)
        for i, (d, pos) in enumerate(self._all_descriptors(imgs)):
            if not len(d):
                continue
            words = self.codebook_.predict(d)
            parts, off = [], 0
            for lvl in range(self.pyramid + 1):
                cells = 2**lvl
                cell = (np.minimum((pos * cells).astype(int), cells - 1) * [cells, 1]).sum(1)
                hist = np.bincount(cell * k + words, minlength=cells * cells * k).astype(np.float32)
                parts.append(hist)
                off += cells * cells * k
            v = np.concatenate(parts)
            out[i] = v / max(1.0, float(np.linalg.norm(v)))
        return out


def _chunk(imgs, dense, step, patch):
    return [_descriptors(i, dense, step, patch) for i in imgs]
