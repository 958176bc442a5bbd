"""Classical pipelines: hand-designed features + a scikit-learn classifier.

``Pipeline([features (FeatureUnion), StandardScaler, classifier])``. Features are
extracted once per dataset split and feature setting (fit on the training split
only — the SIFT codebook never sees validation or test images) and cached, so
trying five classifiers costs one extraction. Each classifier's small grid is
searched by stratified cross-validation on the training split (AUC), the
validation split picks among classifiers, and the test split is reported.
Pipelines are saved with ``skops.io`` and loaded back with an explicit list of
trusted types — no pickle code execution.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from medcls.errors import MedclsError
from medcls.runs import _Run

__all__ = ["CLASSIFIERS", "make_classifier", "run_classical", "ClassicalRun", "save_pipeline", "load_pipeline"]

CLASSIFIERS = ("bayes", "svm", "tree", "knn", "forest")


def make_classifier(name: str, seed: int = 0):
    """(estimator, parameter grid) for a classifier name."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.naive_bayes import GaussianNB
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    if name == "bayes":
        return GaussianNB(), {"var_smoothing": [1e-9, 1e-6, 1e-3]}
    if name == "svm":
        from sklearn.calibration import CalibratedClassifierCV

        # Platt-calibrated probabilities (what SVC(probability=True) did before scikit-learn 1.9),
        # so AUC ranks real scores and the argmax of the probabilities is the prediction.
        svc = CalibratedClassifierCV(SVC(random_state=seed, cache_size=500), ensemble=False, cv=3)
        return svc, [{"estimator__kernel": ["rbf"], "estimator__C": [1.0, 10.0], "estimator__gamma": ["scale"]},
                     {"estimator__kernel": ["linear"], "estimator__C": [0.01, 0.1]}]
    if name == "tree":
        return DecisionTreeClassifier(random_state=seed, class_weight="balanced"), {
            "max_depth": [4, 8, None], "min_samples_leaf": [1, 5, 20]}
    if name == "knn":
        return KNeighborsClassifier(), {"n_neighbors": [5, 15, 31], "weights": ["uniform", "distance"]}
    if name == "forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=-1, class_weight="balanced"), {
            "max_features": ["sqrt"], "min_samples_leaf": [1, 3]}
    raise MedclsError(f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)} or all")


# ---------------------------------------------------------------- persistence

# Only estimator classes are trusted; a function or any other callable (``os.system``,
# ``builtins.eval``, ``numpy.load``) in a file is refused, whatever the file claims.
_TRUSTED_PREFIXES = ("sklearn.", "medcls.features.")


def save_pipeline(pipe, path: Path) -> None:
    import skops.io as sio

    from medcls._atomic import atomic_open

    data = sio.dumps(pipe)
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def load_pipeline(path: Path):
    """Load a pipeline, trusting only scikit-learn, NumPy/SciPy and medcls feature types."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(file=str(path))
    bad = [t for t in untrusted if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise MedclsError(f"{path}: refuses to load untrusted types {bad}")
    return sio.load(str(path), trusted=untrusted)


# ---------------------------------------------------------------- features with a cache

def _cache_dir() -> Path:
    import os

    return Path(os.environ.get("MEDCLS_CACHE", Path.home() / ".cache" / "medcls")) / "features"


def _cache_key(ds, features: str, volume_slices: int) -> str:
    src = Path(ds.source)
    stamp = f"{src.resolve()}:{src.stat().st_mtime_ns}:{src.stat().st_size}" if src.exists() else ds.source
    from medcls import __version__

    return hashlib.sha1(f"{stamp}|{ds.name}|{features}|{volume_slices}|{__version__}".encode()).hexdigest()[:20]


def _extract(ds, features: str, arrays: dict, volume_slices: int, log):
    """Fit the feature union on train; transform every split; cached on disk by dataset + settings."""
    from medcls.features import make_features

    union = make_features(features)
    key = _cache_key(ds, features, volume_slices)
    cache = _cache_dir() / f"{key}.npz"
    t0 = time.perf_counter()
    union.fit(arrays["train"].x)
    feats = None
    if cache.is_file():
        try:
            with np.load(cache) as z:
                feats = {s: z[s] for s in arrays if s in z.files}
            if any(len(feats[s]) != len(arrays[s].y) for s in arrays):
                feats = None
        except (OSError, ValueError, KeyError):
            feats = None
    if feats is None:
        feats = {s: union.transform(a.x) for s, a in arrays.items()}
        cache.parent.mkdir(parents=True, exist_ok=True)
        from medcls._atomic import atomic_open

        with atomic_open(cache, "wb") as fh:
            np.savez(fh, **feats)
        log(f"extracted {features} features ({feats['train'].shape[1]} per image) in {time.perf_counter() - t0:.1f}s")
    else:
        log(f"features from cache {cache}")
    return union, feats


# ---------------------------------------------------------------- running

def run_classical(data: str, *, features: str = "hog", classifier: str = "all", out: str | Path,
                  data_dir: str | None = None, size: int | None = None, volume_slices: int = 4,
                  seed: int = 0, quick: bool = False, log=print) -> str:
    """Train classical pipeline(s), evaluate, write a run folder; return the chosen classifier."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from medcls import __version__
    from medcls._atomic import write_json
    from medcls.data import load_dataset
    from medcls.evaluate import write_outputs
    from medcls.evaluate.metrics import compute_metrics
    from medcls.modalities import Preparation
    from medcls.train.engine import aggregate
    from medcls.train.tensors import MODALITY_OF_FAMILY, to_arrays

    names = list(CLASSIFIERS) if classifier == "all" else [classifier]
    for n in names:
        make_classifier(n)  # validates names before any work
    prep = Preparation(size=size or 64, channels=1)
    ds = load_dataset(data, data_dir=data_dir, size=size, prep=prep, seed=seed)
    if ds.task == "multilabel":
        raise MedclsError("the classical pipeline handles binary and multi-class tasks, not multi-label")
    arrays = {s: to_arrays(ds, s, volume_mode="slices", volume_slices=volume_slices, channels=1)
              for s in ("train", "val", "test") if (ds.splits == s).any()}
    if quick:
        rng = np.random.default_rng(seed)
        from medcls.train.tensors import TrainArrays

        a = arrays["train"]
        keep = np.sort(rng.choice(len(a.y), min(len(a.y), 300), replace=False))
        arrays["train"] = TrainArrays(a.x[keep], a.y[keep], a.sample[keep])
    union, feats = _extract(ds, features, arrays, volume_slices, log)
    y = {s: a.y for s, a in arrays.items()}
    multiclass = len(ds.class_names) > 2
    scoring = "roc_auc_ovr" if multiclass else "roc_auc"
    cv = StratifiedKFold(3, shuffle=True, random_state=seed)
    fitted, table = {}, []
    for n in names:
        est, grid = make_classifier(n, seed)
        pipe = Pipeline([("scale", StandardScaler()), ("clf", est)])
        pgrid = [{f"clf__{k}": v for k, v in g.items()} for g in (grid if isinstance(grid, list) else [grid])]
        if quick:
            pgrid = [{k: v[:1] for k, v in g.items()} for g in pgrid[:1]]
        t0 = time.perf_counter()
        search = GridSearchCV(pipe, pgrid, scoring=scoring, cv=cv, n_jobs=-1, refit=True)
        search.fit(feats["train"], y["train"])
        secs = time.perf_counter() - t0
        model = search.best_estimator_
        row = {"classifier": n, "params": {k.replace("clf__", ""): v for k, v in search.best_params_.items()},
               "cv_auc": float(search.best_score_), "fit_seconds": round(secs, 1)}
        for s in ("val", "test"):
            if s in feats:
                p, yy = aggregate(model.predict_proba(feats[s]), arrays[s].sample, y[s])
                m = compute_metrics(yy, p, ds.task, ds.class_names, n_boot=200)
                row[f"{s}_auc"], row[f"{s}_acc"] = m["auc"], m["acc"]
        fitted[n] = model
        table.append(row)
        log(f"{n:7s} cv AUC {row['cv_auc']:.4f}  val AUC {row.get('val_auc', float('nan')):.4f}  "
            f"test AUC {row.get('test_auc', float('nan')):.4f}  ACC {row.get('test_acc', float('nan')):.4f}  "
            f"({secs:.0f}s)")
    pick = "val_auc" if "val" in feats else "cv_auc"
    best = max(table, key=lambda r: (r[pick] if r[pick] == r[pick] else -1))["classifier"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    full = Pipeline([("features", union), *fitted[best].steps])
    save_pipeline(full, out / "model.skops")
    family = MODALITY_OF_FAMILY.get(ds.modality.upper(), "other")
    meta = {"version": __version__, "kind": "classical", "classifier": best, "features": features,
            "train": {"data": data, "data_dir": data_dir, "size": size, "seed": seed, "features": features,
                      "classifier": classifier},
            "data": {"name": ds.name, "source": ds.source, "task": ds.task, "class_names": ds.class_names,
                     "modality": ds.modality, "is_volume": ds.is_volume, "volume_mode": "slices",
                     "volume_slices": volume_slices},
            "preprocess": {"preparation": Preparation(modality=family, size=int(arrays["train"].x.shape[-1]),
                                                      channels=1).to_dict()},
            "comparison": table}
    write_json(out / "config.json", meta)
    write_json(out / "comparison.json", table)
    results = {}
    for s in ("val", "test"):
        if s in feats:
            results[s] = aggregate(fitted[best].predict_proba(feats[s]), arrays[s].sample, y[s])
    write_outputs(out, meta, results, ds.name)
    return best


class ClassicalRun(_Run):
    """A saved classical pipeline behaving like any run (evaluate, predict, ensemble)."""

    def __init__(self, root: Path, meta: dict):
        from medcls.modalities import Preparation

        self.root, self.meta = root, meta
        self.preparation = Preparation.from_dict(meta["preprocess"]["preparation"])
        self._pipe = None

    @property
    def pipeline(self):
        if self._pipe is None:
            self._pipe = load_pipeline(self.root / "model.skops")
        return self._pipe

    def predict_items(self, x: np.ndarray) -> np.ndarray:
        x = x.mean(1, keepdims=True) if x.ndim == 4 and x.shape[1] > 1 else x
        return self.pipeline.predict_proba(x)

    def sample_probs(self, ds, split: str):
        from medcls.train.engine import aggregate
        from medcls.train.tensors import to_arrays

        a = to_arrays(ds, split, volume_mode="slices", volume_slices=self.meta["data"].get("volume_slices", 4),
                      channels=1)
        return aggregate(self.predict_items(a.x), a.sample, a.y)
