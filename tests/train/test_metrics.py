import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medcls.evaluate.metrics import compute_metrics, reliability


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


def test_calibration_brier_and_ece():
    rng = np.random.default_rng(3)
    p = rng.random(20000)
    y = (rng.random(20000) < p).astype(int)  # outcomes drawn with the predicted risk: calibrated
    calibrated = compute_metrics(y, np.stack([1 - p, p], 1), "binary", ["neg", "pos"], n_boot=10)
    assert calibrated["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert calibrated["brier"] == pytest.approx(1 / 6, abs=0.01)  # E[p(1 - p)] for p uniform
    assert calibrated["ece"] < 0.02
    q = p**3 / (p**3 + (1 - p) ** 3)  # sigmoid(3 logit p): the same ranking, overconfident
    over = compute_metrics(y, np.stack([1 - q, q], 1), "binary", ["neg", "pos"], n_boot=10)
    assert over["auc"] == pytest.approx(calibrated["auc"]) and over["ece"] > 0.1
    rel = reliability(y, np.stack([1 - q, q], 1), "binary")
    assert sum(rel["count"]) == 20000 and rel["what"] == "probability of the positive class"
    # the ECE is the case-weighted gap between the diagram's two curves
    gap = np.abs(np.array(rel["observed"]) - np.array(rel["confidence"]))
    assert over["ece"] == pytest.approx(float(np.sum(np.array(rel["count"]) * gap) / 20000))


def test_multiclass_calibration_uses_the_predicted_class():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]])
    m = compute_metrics(y, probs, "multiclass", list("abc"), n_boot=10)
    assert m["brier"] == pytest.approx(np.mean(((probs - np.eye(3)[y]) ** 2).sum(1)))
    # bins (15 per unit): 0.6 wrong, 0.7 right, 0.8 right, 0.9 right -> |0-.6| + |1-.7| + |1-.8| + |1-.9|
    assert m["ece"] == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4)


def test_decisions_no_better_than_the_commonest_class_are_flagged():
    """A model can rank well (high AUC) while its argmax answers the majority class: that is flagged, not reported."""
    from medcls.evaluate.metrics import decision_warning
    from medcls.evaluate.model_card import model_card_sections
    from medcls.run_folder import RunConfig

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(77, int), np.ones(23, int)]
    score = np.where(y == 1, 0.40, 0.20) + rng.uniform(0, 0.05, 100)  # ranks perfectly, never over 0.5
    collapsed = compute_metrics(y, np.stack([1 - score, score], 1), "binary", ["neg", "pos"], n_boot=10)
    assert collapsed["auc"] == 1.0 and collapsed["classes_predicted"] == 1
    assert collapsed["majority_rate"] == 0.77 and collapsed["acc"] == 0.77
    assert "same class" in decision_warning(collapsed)
    # both classes answered, but fewer right than the majority rule gets
    bad = np.where(rng.uniform(size=100) < 0.35, 1 - y, y)
    worse = compute_metrics(y, np.eye(2)[bad] * 0.8 + 0.1, "binary", ["neg", "pos"], n_boot=10)
    assert worse["classes_predicted"] == 2 and worse["acc"] < 0.77
    assert "not above" in decision_warning(worse)
    good = compute_metrics(y, np.eye(2)[y] * 0.8 + 0.1, "binary", ["neg", "pos"], n_boot=10)
    assert decision_warning(good) is None and good["acc"] == 1.0
    assert decision_warning({"acc": 0.5, "n": 10}) is None  # metrics written before the fields existed
    cfg = RunConfig.from_dict({"kind": "ensemble", "members": ["a", "b"],
                               "data": {"name": "x", "task": "binary", "class_names": ["neg", "pos"],
                                        "modality": "us", "source": "x.npz"}})
    caveats = dict(model_card_sections(cfg, {"test": collapsed}))["Caveats"]
    assert any(c.startswith("On test, every case got the same class") for c in caveats)


@pytest.mark.parametrize("task", ["binary", "multiclass", "multilabel"])
def test_the_bootstrap_scores_each_resample_as_roc_auc_score_does(task):
    """All resamples at once give the interval a loop of auc_score gives, ties and absent classes included."""
    from medcls.evaluate.metrics import auc_score, bootstrap_auc_ci

    rng = np.random.default_rng(2)
    for n in (6, 40, 300):
        if task == "binary":
            y = rng.integers(0, 2, n)
            p1 = np.round(np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1), 1)  # rounded: many tied scores
            probs = np.stack([1 - p1, p1], 1)
        elif task == "multiclass":
            y = rng.integers(0, 3, n)  # in 6 cases, many resamples miss a class
            probs = rng.dirichlet([1, 1, 1], n)
        else:
            y = rng.integers(0, 2, (n, 3))
            probs = np.round(rng.random((n, 3)), 1)
        loop, r = [], np.random.default_rng(7)
        for _ in range(200):
            i = r.integers(0, n, n)
            a = auc_score(y[i], probs[i], task)
            if a == a:
                loop.append(a)
        want = [np.quantile(loop, 0.025), np.quantile(loop, 0.975)]
        assert bootstrap_auc_ci(y, probs, task, n_boot=200, seed=7) == pytest.approx(want, abs=1e-12)
