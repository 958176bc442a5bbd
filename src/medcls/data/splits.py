"""Train/val/test splits: stratified by label, grouped by patient."""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["make_splits"]


def _strata(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim == 2:  # multi-label: stratify on the label combination
        return np.array(["".join(map(str, r.astype(int))) for r in labels])
    return labels


def _split_off(y, groups, frac, rng_seed):
    """Indices (rest, held) with about ``frac`` of samples held out, whole groups only."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    n_splits = max(2, int(round(1.0 / frac)))
    _, counts = np.unique(y, return_counts=True)
    n_groups = len(np.unique(groups))
    if counts.min() >= n_splits and n_groups >= n_splits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=rng_seed)
            rest, held = next(cv.split(np.zeros(len(y)), y, groups))
        return rest, held
    gss = GroupShuffleSplit(n_splits=1, test_size=frac, random_state=rng_seed)
    return next(gss.split(np.zeros(len(y)), y, groups))


def make_splits(labels, groups=None, val: float = 0.1, test: float = 0.2, seed: int = 0) -> np.ndarray:
    """Assign each sample to ``train``, ``val`` or ``test``.

    Stratified by label (label combination for multi-label) and grouped: all
    samples of one group (patient) land in the same split.

    Returns:
        ``(N,)`` array of split names.
    """
    y = _strata(labels)
    n = len(y)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    out = np.full(n, "train", dtype=object)
    if n < 3:
        return out.astype(str)
    idx = np.arange(n)
    rest, held = _split_off(y, groups, test, seed)
    out[idx[held]] = "test"
    if val > 0 and len(rest) >= 2:
        r2, h2 = _split_off(y[rest], groups[rest], val / (1.0 - test), seed + 1)
        out[rest[h2]] = "val"
    return out.astype(str)
