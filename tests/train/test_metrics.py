import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medcls.evaluate.metrics import compute_metrics


def test_binary_metrics_from_confusion():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p1 = np.clip(y * 0.4 + rng.random(300) * 0.6, 0, 1)
    probs = np.stack([1 - p1, p1], 1)
    m = compute_metrics(y, probs, "binary", ["neg", "pos"])
    assert m["auc"] == pytest.approx(roc_auc_score(y, p1))
    (tn, fp), (fn, tp) = m["confusion"]
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn)) and m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["acc"] == pytest.approx((tp + tn) / 300) and m["n"] == 300
    lo, hi = m["auc_ci95"]
    assert lo < m["auc"] < hi and hi - lo < 0.2


def test_multiclass_auc_is_medmnist_ovr_macro():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + np.eye(4)[y] * 1.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = compute_metrics(y, probs, "multiclass", list("abcd"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert set(m["per_class"]) == set("abcd") and len(m["confusion"]) == 4


def test_multilabel_mean_per_label_auc():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (150, 3)).astype(float)
    probs = np.clip(y * 0.3 + rng.random((150, 3)) * 0.7, 0, 1)
    m = compute_metrics(y, probs, "multilabel", ["a", "b", "c"])
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], probs[:, j]) for j in range(3)]))
    assert m["acc"] == pytest.approx(((probs >= 0.5) == y).mean())
