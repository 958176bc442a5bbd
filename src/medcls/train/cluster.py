"""Unsupervised: cluster classical, trained-CNN or self-supervised features; score against labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcls.errors import MedclsError

__all__ = ["cluster_dataset", "purity"]


def purity(y: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose cluster's majority label is their own label."""
    total = 0
    for c in np.unique(clusters):
        total += np.bincount(y[clusters == c]).max()
    return float(total / len(y))


def _items(ds, split: str, max_samples: int | None, seed: int):
    from medcls.train.tensors import to_arrays

    a = to_arrays(ds, split, volume_mode="2.5d", volume_slices=1, channels=None if not ds.is_volume else 3)
    if max_samples and len(a.y) > max_samples:
        idx = np.sort(np.random.default_rng(seed).choice(len(a.y), max_samples, replace=False))
        return a.x[idx], a.y[idx]
    return a.x, a.y


def cluster_dataset(data: str, features: str, out: str | Path, *, k: int | None = None, method: str = "kmeans",
                    embedding: str = "pca", split: str = "train", max_samples: int | None = 2000,
                    data_dir: str | None = None, ssl_epochs: int = 5, ssl_model: str = "alexnet_onetower",
                    seed: int = 0, log=print) -> dict:
    """Cluster one split of a dataset; write ``cluster.json``, ``assignments.csv`` and embedding plots."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.mixture import GaussianMixture
    from sklearn.preprocessing import StandardScaler

    from medcls._atomic import write_json, write_text
    from medcls.data import load_dataset
    from medcls.evaluate.plots import plot_embedding

    if method not in ("kmeans", "gmm"):
        raise MedclsError(f"--method must be kmeans or gmm, not {method!r}")
    out = Path(out)
    if features.startswith("cnn:"):
        from medcls.runs import CNNRun, load_run

        run = load_run(features[4:])
        if not isinstance(run, CNNRun):
            raise MedclsError(f"{features[4:]}: --features cnn:RUN needs a CNN run")
        ds = run.load_dataset(data)
        x, y = _items(ds, split, max_samples, seed)
        if ds.is_volume:
            x = x[:, : run.meta["model"]["in_channels"]]
        feats = run.embed(x)
    else:
        ds = load_dataset(data, data_dir=data_dir)
        x, y = _items(ds, split, max_samples, seed)
        if features == "hog":
            from medcls.features import HOGFeatures

            feats = HOGFeatures().fit(x).transform(x)
        elif features == "ssl":
            from medcls.train.engine import select_device
            from medcls.train.ssl import embed, pretrain_simclr

            dev = select_device("auto")
            enc, norm = pretrain_simclr(x, model=ssl_model, epochs=ssl_epochs, seed=seed, device=dev, log=log)
            feats = embed(enc, norm, x, dev)
        else:
            raise MedclsError(f"--features must be hog, ssl or cnn:RUN, not {features!r}")
    labelled = ds.task != "multilabel"
    k = k or len(ds.class_names)
    z = StandardScaler().fit_transform(feats.astype(np.float64))
    if z.shape[1] > 50:
        z = PCA(50, random_state=seed).fit_transform(z)
    if method == "kmeans":
        assign = KMeans(k, n_init=10, random_state=seed).fit_predict(z)
    else:
        assign = GaussianMixture(k, covariance_type="diag", random_state=seed).fit(z).predict(z)
    res = {"data": ds.name, "split": split, "features": features, "method": method, "k": int(k), "n": int(len(assign)),
           "feature_dim": int(feats.shape[1]), "cluster_sizes": np.bincount(assign, minlength=k).tolist()}
    if labelled:
        res.update(nmi=float(normalized_mutual_info_score(y, assign)), ari=float(adjusted_rand_score(y, assign)),
                   purity=purity(y, assign))
    if embedding == "pca":
        xy = PCA(2, random_state=seed).fit_transform(z)
    elif embedding == "tsne":
        from sklearn.manifold import TSNE

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
