"""Metrics as clinical papers report them, computed with scikit-learn.

Binary: AUC of the positive class (index 1), accuracy of argmax, sensitivity =
recall of class 1, specificity = recall of class 0. Multi-class: one-vs-rest
macro AUC exactly as MedMNIST computes it (``roc_auc_score(..., multi_class="ovr",
average="macro")``), per-class sensitivity/specificity. Multi-label: mean
per-label AUC, accuracy over all label decisions at 0.5 (MedMNIST's ACC).
"""

from __future__ import annotations

import numpy as np

__all__ = ["auc_score", "compute_metrics", "bootstrap_auc_ci"]


def auc_score(y: np.ndarray, probs: np.ndarray, task: str) -> float:
    """AUC for a task; NaN where it is undefined (one class only)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    try:
        if task == "multilabel":
            per = [roc_auc_score(y[:, j], probs[:, j]) for j in range(y.shape[1]) if len(np.unique(y[:, j])) == 2]
            return float(np.mean(per)) if per else float("nan")
        if len(np.unique(y)) < 2:
            return float("nan")
        if probs.shape[1] == 2:
            return float(roc_auc_score(y, probs[:, 1]))
        if len(np.unique(y)) < probs.shape[1]:
            present = np.unique(y)
            p = probs[:, present] / probs[:, present].sum(1, keepdims=True)
            return float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=present))
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    except ValueError:
        return float("nan")


def bootstrap_auc_ci(y, probs, task: str, n_boot: int = 500, seed: int = 0, alpha: float = 0.05) -> list[float]:
    """Percentile bootstrap 95 % confidence interval of the AUC (resampling cases)."""
    rng = np.random.default_rng(seed)
    y, probs = np.asarray(y), np.asarray(probs)
    n = len(y)
    vals = []
    for _ in range(n_boot):
        i = rng.integers(0, n, n)
        a = auc_score(y[i], probs[i], task)
        if a == a:
            vals.append(a)
    if not vals:
        return [float("nan"), float("nan")]
    return [float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))]


def compute_metrics(y, probs, task: str, class_names: list[str], n_boot: int = 500, seed: int = 0) -> dict:
    """``acc, auc, auc_ci95, sensitivity, specificity, f1, confusion, n`` (+ per class)."""
    from sklearn.metrics import confusion_matrix, f1_score, recall_score

    y, probs = np.asarray(y), np.asarray(probs, dtype=np.float64)
    out: dict = {"n": int(len(y))}
    out["auc"] = auc_score(y, probs, task)
    out["auc_ci95"] = bootstrap_auc_ci(y, probs, task, n_boot=n_boot, seed=seed)
    if task == "multilabel":
        pred = (probs >= 0.5).astype(int)
        yt = y.astype(int)
        out["acc"] = float((pred == yt).mean())
        out["f1"] = float(f1_score(yt, pred, average="macro", zero_division=0))
        per = {}
        for j, name in enumerate(class_names):
            tp = int(((pred[:, j] == 1) & (yt[:, j] == 1)).sum())
            fn = int(((pred[:, j] == 0) & (yt[:, j] == 1)).sum())
            tn = int(((pred[:, j] == 0) & (yt[:, j] == 0)).sum())
            fp = int(((pred[:, j] == 1) & (yt[:, j] == 0)).sum())
            per[name] = {"auc": auc_score(yt[:, [j]], probs[:, [j]], "multilabel"),
                         "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
                         "specificity": tn / (tn + fp) if tn + fp else float("nan"),
                         "confusion": [[tn, fp], [fn, tp]]}
        out["per_class"] = per
        out["sensitivity"] = float(np.nanmean([v["sensitivity"] for v in per.values()]))
        out["specificity"] = float(np.nanmean([v["specificity"] for v in per.values()]))
        out["confusion"] = [per[n]["confusion"] for n in class_names]
        return out
    k = probs.shape[1]
    pred = probs.argmax(1)
    labels = list(range(k))
    cm = confusion_matrix(y, pred, labels=labels)
    out["acc"] = float((pred == y).mean())
    out["confusion"] = cm.tolist()
    recalls = recall_score(y, pred, labels=labels, average=None, zero_division=0)
    per = {}
    for c, name in enumerate(class_names):
        tp, fn = cm[c, c], cm[c].sum() - cm[c, c]
        fp, tn = cm[:, c].sum() - cm[c, c], cm.sum() - cm[c].sum() - cm[:, c].sum() + cm[c, c]
        per[name] = {"sensitivity": float(recalls[c]), "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
                     "n": int(cm[c].sum())}
        del tp, fn
    out["per_class"] = per
    if k == 2:
        out["sensitivity"] = per[class_names[1]]["sensitivity"]
        out["specificity"] = per[class_names[1]]["specificity"]
        out["f1"] = float(f1_score(y, pred, pos_label=1, average="binary", zero_division=0))
        out["positive_class"] = class_names[1]
    else:
        out["sensitivity"] = float(np.mean([v["sensitivity"] for v in per.values()]))
        out["specificity"] = float(np.nanmean([v["specificity"] for v in per.values()]))
        out["f1"] = float(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    return out
