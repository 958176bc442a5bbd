"""Operating points, Wilson intervals, DeLong and McNemar, net benefit: each against an independent computation."""

import math

import numpy as np
import pytest
from scipy.stats import binom, norm
from sklearn.metrics import roc_auc_score

from medcls.errors import MedclsError
from medcls.evaluate.stats import (at_threshold, choose_threshold, delong_test, mcnemar_test, net_benefit,
                                   paired_bootstrap, parse_target, wilson_ci)


def _scores(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    a = np.clip(y * 0.35 + rng.normal(0.4, 0.2, n), 0, 1).round(2)  # ties on purpose
    b = np.clip(y * 0.2 + 0.5 * a + rng.normal(0.2, 0.2, n), 0, 1).round(2)
    return y, a, b


def _delong_by_definition(y, a, b):
    """DeLong et al. 1988 straight from the definition: psi kernels over every (positive, negative) pair."""
    v10, v01 = [], []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    m, n = len(v10[0]), len(v01[0])
    s = np.cov(np.vstack(v10)) / m + np.cov(np.vstack(v01)) / n
    diff = v10[0].mean() - v10[1].mean()
    se = math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return diff, se, 2 * norm.sf(abs(diff / se))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_equals_the_definition_and_sklearn_auc(seed):
    y, a, b = _scores(seed)
    r = delong_test(y, a, b)
    assert r["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    diff, se, p = _delong_by_definition(y, a, b)
    assert r["diff"] == pytest.approx(diff, abs=1e-12)
    assert r["se"] == pytest.approx(se, rel=1e-9)
    assert r["p"] == pytest.approx(p, rel=1e-9)
    assert r["diff_ci95"][0] < r["diff"] < r["diff_ci95"][1]


def test_delong_of_a_model_with_itself_is_no_difference():
    y, a, _ = _scores()
    r = delong_test(y, a, a)
    assert r["diff"] == 0 and r["p"] == 1.0


def test_mcnemar_exact_p_on_the_discordant_pairs():
    ra = np.array([1] * 30 + [0] * 12 + [1] * 50 + [0] * 8, bool)
    rb = np.array([0] * 30 + [1] * 12 + [1] * 50 + [0] * 8, bool)
    r = mcnemar_test(ra, rb)
    assert (r["a_right_b_wrong"], r["a_wrong_b_right"]) == (30, 12)
    assert r["p"] == pytest.approx(min(1.0, 2 * binom.cdf(12, 42, 0.5)), rel=1e-9)
    assert r["chi2_cc"] == pytest.approx((abs(30 - 12) - 1) ** 2 / 42)
    assert mcnemar_test(ra, ra)["p"] == 1.0


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (45, 50), (500, 1000)])
def test_wilson_interval_is_the_score_interval(k, n):
    z, p = norm.ppf(0.975), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = wilson_ci(k, n)
    assert lo == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert hi == pytest.approx(min(1.0, centre + half), abs=1e-9)


def test_operating_points_meet_their_targets_on_the_data_they_were_chosen_on():
    y, a, _ = _scores(3, 500)
    t = choose_threshold(y, a, "sens=0.9")
    assert at_threshold(y, a, t)["sensitivity"] >= 0.9
    # the most specific such threshold: one step higher misses the target
    higher = np.unique(a)[np.unique(a) > t]
    if len(higher):
        assert at_threshold(y, a, higher[0])["sensitivity"] < 0.9
    t = choose_threshold(y, a, "spec=0.8")
    assert at_threshold(y, a, t)["specificity"] >= 0.8
    lower = np.unique(a)[np.unique(a) < t]
    if len(lower):
        assert at_threshold(y, a, lower[-1])["specificity"] < 0.8
    t = choose_threshold(y, a, "youden")
    j = at_threshold(y, a, t)
    best = max(at_threshold(y, a, u)["sensitivity"] + at_threshold(y, a, u)["specificity"] for u in np.unique(a))
    assert j["sensitivity"] + j["specificity"] == pytest.approx(best)


def test_ppv_and_npv_at_a_prevalence_follow_bayes():
    y, a, _ = _scores(4, 400)
    r = at_threshold(y, a, 0.5, prevalence=0.05)
    se, sp = r["sensitivity"], r["specificity"]
    assert r["at_prevalence"]["ppv"] == pytest.approx(se * 0.05 / (se * 0.05 + (1 - sp) * 0.95))
    assert r["at_prevalence"]["npv"] == pytest.approx(sp * 0.95 / (sp * 0.95 + (1 - se) * 0.05))
    assert r["tp"] + r["fn"] == int(y.sum()) and r["tn"] + r["fp"] == int((1 - y).sum())
    assert r["sensitivity_ci95"][0] <= se <= r["sensitivity_ci95"][1]


def test_bad_targets_are_refused():
    for bad in ("sens", "sens=1.5", "ppv=0.9", "sens=abc"):
        with pytest.raises(MedclsError):
            parse_target(bad)


def test_net_benefit_of_treating_all_and_a_perfect_model():
    y = np.array([1] * 20 + [0] * 80)
    perfect = y.astype(float)
    nb = net_benefit(y, perfect, [0.1, 0.2, 0.5])
    assert nb["model"] == pytest.approx([0.2, 0.2, 0.2])
    assert nb["treat_all"] == pytest.approx([0.2 - 0.8 * 0.1 / 0.9, 0.2 - 0.8 * 0.25, 0.2 - 0.8])


def test_paired_bootstrap_ci_covers_the_difference():
    y, a, b = _scores(5)
    r = paired_bootstrap(y, a, b, roc_auc_score, n_boot=300)
    assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]
    assert r["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_the_paired_auc_bootstrap_is_the_loop_of_paired_bootstrap(task):
    """medcls compare's AUC difference: every resample at once, the same resamples and values as the loop."""
    from medcls.evaluate.metrics import auc_score
    from medcls.evaluate.stats import paired_auc_bootstrap

    rng = np.random.default_rng(3)
    for n in (8, 200):
        if task == "binary":
            y = rng.integers(0, 2, n)
            pa, pb = (np.stack([1 - q, q], 1) for q in np.round(rng.random((2, n)) * 0.5 + y * 0.3, 1))
        else:
            y = rng.integers(0, 3, n)
            pa, pb = rng.dirichlet([1, 1, 1], n), rng.dirichlet([1, 1, 1], n)
        want = paired_bootstrap(y, pa, pb, lambda yy, pp: auc_score(yy, pp, task), n_boot=300, seed=4)
        got = paired_auc_bootstrap(y, pa, pb, task, n_boot=300, seed=4)
        assert got["n_boot"] == want["n_boot"] and got["diff"] == pytest.approx(want["diff"], abs=1e-12)
        assert got["ci95"] == pytest.approx(want["ci95"], abs=1e-12)
