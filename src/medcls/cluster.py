"""Unsupervised: cluster classical, trained-CNN or self-supervised features; score against labels.

Features are HOG (classical), a trained run's penultimate layer (``cnn:RUN``),
or a SimCLR encoder pretrained here (``ssl``). Clusters are scored against the
labels (NMI, ARI, purity) and the features with a linear probe, the usual
measure of a self-supervised representation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medcls._atomic import write_json, write_text
from medcls.data import load_dataset, to_items
from medcls.errors import DataError, MedclsError
from medcls.evaluate.metrics import auc_score
from medcls.evaluate.plots import plot_embedding
from medcls.features import HOGFeatures
from medcls.infer import select_device
from medcls.runs import CNNRun, load_run
from medcls.train.ssl import embed, pretrain_simclr

__all__ = ["cluster_dataset", "purity", "linear_probe"]


def purity(y: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose cluster's majority label is their own label."""
    total = 0
    for c in np.unique(clusters):
        total += np.bincount(y[clusters == c]).max()
    return float(total / len(y))


def linear_probe(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray, task: str,
                 seed: int = 0) -> dict:
    """Logistic regression on frozen features (standardised); test ``acc``, ``auc`` and the sizes."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(f_train.astype(np.float64), y_train)
    p = np.zeros((len(y_test), int(max(y_train.max(), y_test.max())) + 1))
    p[:, clf.classes_] = clf.predict_proba(f_test.astype(np.float64))
    return {"classifier": "logistic regression on standardised features", "n_train": int(len(y_train)),
            "n_test": int(len(y_test)), "acc": float((p.argmax(1) == y_test).mean()), "auc": auc_score(y_test, p, task)}


def _clustered_items(ds, split: str, max_samples: int | None, seed: int, k: int | None, whole: str | None = None):
    """The split's items and labels to cluster, and ``k`` (default: the number of classes), checked."""
    if not (ds.splits == split).any():
        have = ", ".join(sorted(set(ds.splits.tolist())))
        raise DataError(f"{ds.source}: no {split!r} split to cluster (it has {have})")
    x, y = _items(ds, split, max_samples, seed, whole)
    k = len(ds.class_names) if k is None else k
    if not 2 <= k <= len(y):
        raise MedclsError(f"--k must be from 2 to the number of samples clustered ({len(y)}), got {k}")
    return x, y, k


def _items(ds, split: str, max_samples: int | None, seed: int, whole: str | None = None):
    """One item per sample: the central 2.5-D stack of a volume, or (``whole``: acs / 3d) the volume itself."""
    if whole:
        a = to_items(ds, split, volume_mode=whole, channels=1)
    else:
        a = to_items(ds, split, volume_mode="2.5d", volume_slices=1, channels=None if not ds.is_volume else 3)
    if max_samples and len(a.y) > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(len(a.y), max_samples, replace=False))
        return a.x[idx], a.y[idx]
    return a.x, a.y


def cluster_dataset(data: str, features: str, out: str | Path, *, k: int | None = None, method: str = "kmeans",
                    embedding: str = "pca", split: str = "train", max_samples: int | None = 2000,
                    data_dir: str | None = None, ssl_epochs: int = 20, ssl_model: str = "alexnet_onetower",
                    probe: bool = True, seed: int = 0, log=print) -> dict:
    """Cluster one split of a dataset; write ``cluster.json``, ``assignments.csv`` and embedding plots.

    With labels, the clusters are scored against them (NMI, ARI, purity) and, when
    ``probe`` and the dataset has a test split, a linear probe (the usual measure of
    a self-supervised representation) is fitted on the clustered split's features
    and labels and scored on the test split's features.
    """
    if method not in ("kmeans", "gmm"):
        raise MedclsError(f"--method must be kmeans or gmm, not {method!r}")
    if max_samples is not None and max_samples < 0:
        raise MedclsError(f"--max-samples must be 0 (the whole split) or more, got {max_samples}")
    out = Path(out)
    whole = None  # a volume run's items: whole volumes
    if features.startswith("cnn:"):
        run = load_run(features[4:])
        if not isinstance(run, CNNRun):
            raise MedclsError(f"{features[4:]}: --features cnn:RUN needs a CNN run")
        ds = run.load_dataset(data, data_dir)
        whole = run.config.data.volume_mode if run.whole_volume and ds.is_volume else None
        x, y, k = _clustered_items(ds, split, max_samples, seed, k, whole)
        channels = run.config.model.in_channels

        def featurize(a):
            return run.embed(a[:, :channels] if ds.is_volume else a)
    else:
        ds = load_dataset(data, data_dir=data_dir)
        x, y, k = _clustered_items(ds, split, max_samples, seed, k)
        if features == "hog":
            hog = HOGFeatures().fit(x)
            featurize = hog.transform
        elif features == "ssl":
            dev = select_device("auto")
            enc, norm = pretrain_simclr(x, model=ssl_model, epochs=ssl_epochs, seed=seed, device=dev, log=log)

            def featurize(a):
                return embed(enc, norm, a, dev)
        else:
            raise MedclsError(f"--features must be hog, ssl or cnn:RUN, not {features!r}")
    feats = featurize(x)
    labelled = ds.task != "multilabel"
    z = StandardScaler().fit_transform(feats.astype(np.float64))
    dims = min(50, *z.shape)  # PCA gives at most as many components as samples
    if z.shape[1] > dims:
        z = PCA(dims, random_state=seed).fit_transform(z)
    if method == "kmeans":
        assign = KMeans(k, n_init=10, random_state=seed).fit_predict(z)
    else:
        assign = GaussianMixture(k, covariance_type="diag", random_state=seed).fit(z).predict(z)
    res = {"data": ds.name, "split": split, "features": features, "method": method, "k": int(k), "n": int(len(assign)),
           "feature_dim": int(feats.shape[1]), "cluster_sizes": np.bincount(assign, minlength=k).tolist()}
    if labelled:
        res.update(nmi=float(normalized_mutual_info_score(y, assign)), ari=float(adjusted_rand_score(y, assign)),
                   purity=purity(y, assign))
        if probe and split != "test" and (ds.splits == "test").any() and len(np.unique(y)) > 1:
            xt, yt = _items(ds, "test", max_samples, seed, whole)
            res["probe"] = linear_probe(feats, y, featurize(xt), yt, ds.task, seed)
    if embedding == "pca":
        xy = PCA(2, random_state=seed).fit_transform(z)
    elif embedding == "tsne":
        xy = TSNE(2, random_state=seed, init="pca", perplexity=min(30, max(5, len(z) // 10))).fit_transform(z)
    elif embedding == "umap":
        try:
            import umap
        except ImportError as exc:
            raise MedclsError("--embedding umap needs the umap-learn package (pip install umap-learn)") from exc
        xy = umap.UMAP(random_state=seed).fit_transform(z)
    else:
        raise MedclsError(f"--embedding must be pca, tsne or umap, not {embedding!r}")
    out.mkdir(parents=True, exist_ok=True)
    plot_embedding(xy, assign, out / "embedding_clusters.png", f"{ds.name}: {method} clusters ({features})")
    if labelled:
        plot_embedding(xy, y, out / "embedding_labels.png", f"{ds.name}: true labels", ds.class_names)
    rows = ["index,cluster" + (",label" if labelled else "")]
    rows += [f"{i},{c}" + (f",{ds.class_names[int(t)]}" if labelled else "") for i, (c, t) in
             enumerate(zip(assign, y if labelled else assign))]
    write_text(out / "assignments.csv", "\n".join(rows) + "\n")
    write_json(out / "cluster.json", res)
    return res
