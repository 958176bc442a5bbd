"""Classical pipelines: hand-designed features + a scikit-learn classifier.

``Pipeline([features (FeatureUnion), StandardScaler, classifier])``. Features are
extracted once per dataset split and feature setting (fit on the training split
only — the SIFT codebook never sees validation or test images) and cached, so
trying five classifiers costs one extraction. Each classifier's small grid is
searched by stratified cross-validation on the training split (AUC), the
mean of the cross-validated and the validation AUC picks among classifiers
(:func:`selection_score`), and the test split is reported.
Pipelines are saved with ``skops.io`` and loaded back with an explicit list of
trusted types — no pickle code execution.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medcls._atomic import atomic_open, write_json
from medcls._version import __version__
from medcls.data import load_dataset, require_two_classes, run_preparation, subset_items, to_items
from medcls.errors import MedclsError
from medcls.evaluate.metrics import compute_metrics
from medcls.features import make_features, resolve_features, takes_whole_volumes
from medcls.infer import aggregate
from medcls.modalities import PrepOptions
from medcls.run_folder import DataInfo, Preprocess, RunConfig, RunFolder

__all__ = ["CLASSIFIERS", "make_classifier", "run_classical", "pick_classifier", "selection_score", "save_pipeline",
           "load_pipeline"]

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


def selection_score(row: dict) -> float:
    """How a tuned classifier is judged: the mean of its validation AUC and its cross-validated training AUC.

    Both are AUCs on images the fit did not see. On a small validation split
    (BreastMNIST: 78 images) one alone is noisy: a kNN reached validation AUC
    0.964 with a cross-validated 0.734 there, and the mean of the two would not
    have picked it (bench/results/classical_sweep.json). Without a validation
    split the cross-validated AUC alone decides.
    """
    cv, val = row.get("cv_auc", float("nan")), row.get("val_auc", float("nan"))
    scores = [v for v in (cv, val) if v == v]
    return float(np.mean(scores)) if scores else -1.0


def pick_classifier(table: list[dict]) -> str:
    """The classifier of the best :func:`selection_score` in a comparison table (the first on a tie)."""
    return max(table, key=selection_score)["classifier"]


# ---------------------------------------------------------------- persistence

# Only estimator classes are trusted; a function or any other callable (``os.system``,
# ``builtins.eval``, ``numpy.load``) in a file is refused, whatever the file claims.
_TRUSTED_PREFIXES = ("sklearn.", "medcls.features.")


def save_pipeline(pipe, path: Path) -> None:
    import skops.io as sio

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
    return Path(os.environ.get("MEDCLS_CACHE", Path.home() / ".cache" / "medcls")) / "features"


def _cache_key(ds, features: str, settings: str) -> str:
    src = Path(ds.source)
    stamp = f"{src.resolve()}:{src.stat().st_mtime_ns}:{src.stat().st_size}" if src.exists() else ds.source
    return hashlib.sha1(f"{stamp}|{ds.name}|{features}|{settings}|{__version__}".encode()).hexdigest()[:20]


def _extract(ds, features: str, arrays: dict, settings: str, log):
    """Fit the feature union on train; transform every split; cached on disk by dataset + settings.

    ``settings`` names everything else that shapes the items (preparation, volume slices).
    """
    union = make_features(features)
    key = _cache_key(ds, features, settings)
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
        with atomic_open(cache, "wb") as fh:
            np.savez(fh, **feats)
        log(f"extracted {features} features ({feats['train'].shape[1]} per image) in {time.perf_counter() - t0:.1f}s")
    else:
        log(f"features from cache {cache}")
    return union, feats


# ---------------------------------------------------------------- running

def run_classical(data: str, *, features: str = "auto", classifier: str = "all", out: str | Path,
                  data_dir: str | None = None, size: int | None = None, volume_slices: int = 4,
                  seed: int = 0, quick: bool = False, options: PrepOptions | None = None, log=print) -> str:
    """Train classical pipeline(s) and write a run folder; return the classifier chosen on held-out AUC.

    ``features`` ``auto`` takes the default for the data (``DEFAULT_FEATURES``: 2-D
    features for images, 3-D shape and a coarse thumbnail of each whole volume for
    volume sets). Whole-volume features (``shape``) make each volume one item;
    2-D features see a volume's slices and its answer is their mean.

    The run is evaluated afterwards like any other (:func:`medcls.runs.evaluate_after_training`).
    """
    names = list(CLASSIFIERS) if classifier == "all" else [classifier]
    for n in names:
        make_classifier(n)  # validates names before any work
    options = options or PrepOptions()
    auto = features.strip() == "auto"
    whole = not auto and takes_whole_volumes(features)  # checks the names before any file is read
    file_prep = options.preparation(size or 64, 1, volume_mode="3d" if whole else "slices")
    ds = load_dataset(data, data_dir=data_dir, size=size, prep=file_prep, seed=seed)
    if auto:
        features = resolve_features("auto", ds.is_volume)
        whole = takes_whole_volumes(features)
        if whole and ds.from_files:  # volume files read again, each whole (they were read as slices)
            file_prep = options.preparation(size or 64, 1, volume_mode="3d")
            ds = load_dataset(data, data_dir=data_dir, size=size, prep=file_prep, seed=seed)
    if whole and not ds.is_volume:
        raise MedclsError(f"{ds.source}: features {features!r} describe whole volumes, and this dataset holds 2-D "
                          "images; use 2-D features (hog, sift, stats, texture, pixels)")
    if ds.task == "multilabel":
        raise MedclsError("the classical pipeline handles binary and multi-class tasks, not multi-label")
    mode = "3d" if whole else "slices"
    items = {s: to_items(ds, s, volume_mode=mode, volume_slices=volume_slices, channels=1, volume_axis=options.axis)
             for s in ("train", "val", "test") if (ds.splits == s).any()}
    require_two_classes(ds, items["train"].y)
    prep = run_preparation(ds, options, file_prep, size=int(items["train"].x.shape[-1]), channels=1, volume_mode=mode)
    if quick:
        items["train"] = subset_items(items["train"], 300, seed)
    settings = json.dumps([file_prep.to_dict() if ds.from_files else None, volume_slices, options.axis, mode])
    union, feats = _extract(ds, features, items, settings, log)
    y = {s: a.y for s, a in items.items()}
    scoring = "roc_auc_ovr" if len(ds.class_names) > 2 else "roc_auc"
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
                p, yy = aggregate(model.predict_proba(feats[s]), items[s].sample, y[s])
                m = compute_metrics(yy, p, ds.task, ds.class_names, n_boot=200)
                row[f"{s}_auc"], row[f"{s}_acc"] = m["auc"], m["acc"]
        fitted[n] = model
        table.append(row)
        log(f"{n:7s} cv AUC {row['cv_auc']:.4f}  val AUC {row.get('val_auc', float('nan')):.4f}  "
            f"test AUC {row.get('test_auc', float('nan')):.4f}  ACC {row.get('test_acc', float('nan')):.4f}  "
            f"({secs:.0f}s)")
    best = pick_classifier(table)
    folder = RunFolder(out)
    folder.root.mkdir(parents=True, exist_ok=True)
    save_pipeline(Pipeline([("features", union), *fitted[best].steps]), folder.pipeline)
    config = RunConfig(
        kind="classical", classifier=best, features=features,
        train={"data": data, "data_dir": data_dir, "size": size, "seed": seed, "features": features,
               "classifier": classifier, **asdict(options)},
        data=DataInfo(name=ds.name, source=ds.source, task=ds.task, class_names=list(ds.class_names),
                      modality=ds.modality, is_volume=ds.is_volume, volume_mode=mode, volume_slices=volume_slices,
                      volume_axis=options.axis),
        preprocess=Preprocess(prep), comparison=table)
    folder.write_config(config)
    write_json(folder.comparison, table)
    return best
