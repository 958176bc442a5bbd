"""One feature function over a batch of images or volumes, in worker processes when the batch is large."""

from __future__ import annotations

import numpy as np


def map_items(fn, items: np.ndarray, *args, n_jobs: int, serial_below: int, per_chunk: int) -> np.ndarray:
    """``np.stack([fn(x, *args) for x in items])``, split over joblib processes.

    Below ``serial_below`` items (or with ``n_jobs == 1``) it runs here; otherwise
    in chunks of about ``per_chunk`` items (at most 64 chunks). ``fn`` must be a
    module-level function so that workers can import it.
    """
    if len(items) < serial_below or n_jobs == 1:
        return _apply(fn, items, *args)
    from joblib import Parallel, delayed

    chunks = np.array_split(np.arange(len(items)), max(1, min(len(items) // per_chunk, 64)))
    return np.concatenate(Parallel(n_jobs=n_jobs)(delayed(_apply)(fn, items[c], *args) for c in chunks))


def _apply(fn, items: np.ndarray, *args) -> np.ndarray:
    return np.stack([fn(x, *args) for x in items])
