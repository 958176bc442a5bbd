"""Results per patient (or study, lesion) and per subgroup: what a clinical reader asks after the image-level AUC.

A technician acquires several images of the same lesion; a patient has several
studies. The answer a clinician acts on is per patient, so image probabilities
are aggregated per group by a rule saved with the result:

- ``mean``: the average probability (each image an equal witness);
- ``max``: the most suspicious image decides (a screening reading);
- ``noisy-or``: 1 - prod(1 - p), the chance that at least one image is positive
  if they were independent (rises with the number of images; binary and multi-label only).

A group's label is positive when any of its images is (binary, multi-label);
a multi-class group takes its most frequent label.

Subgroups (``medcls evaluate --by sex,site``) get the same metrics with their
confidence intervals, and the largest AUC gap between any two of them.
"""

from __future__ import annotations

import numpy as np

from medcls.evaluate.metrics import compute_metrics
from medcls.evaluate.stats import wilson_ci

__all__ = ["AGGREGATION_RULES", "aggregate_groups", "group_level", "subgroup_metrics"]

AGGREGATION_RULES = ("mean", "max", "noisy-or")
MIN_SUBGROUP = 10  # fewer cases than this: reported with its counts, no AUC (its interval would span everything)


def aggregate_groups(probs: np.ndarray, y: np.ndarray, groups: np.ndarray, rule: str, task: str):
    """Probabilities and labels per group (groups in order of first appearance); ``(probs, y, group ids)``."""
    if rule not in AGGREGATION_RULES:
        from medcls.errors import MedclsError

        raise MedclsError(f"--aggregate must be one of {', '.join(AGGREGATION_RULES)}, not {rule!r}")
    probs, y, groups = np.asarray(probs, np.float64), np.asarray(y), np.asarray(groups).astype(str)
    ids, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-appearance order
    out_p, out_y = [], []
    for g in order:
        m = inv == g
        p = probs[m]
        if rule == "mean":
            q = p.mean(0)
        elif rule == "max":
            q = p.max(0)
        else:
            if task != "multilabel" and p.shape[1] > 2:
                from medcls.errors import MedclsError

                raise MedclsError("noisy-or aggregates the probability of a positive finding: binary and "
                                  "multi-label runs only; use mean or max for a multi-class run")
            if task == "multilabel":
                q = 1 - np.prod(1 - p, 0)
            else:
                pos = 1 - np.prod(1 - p[:, 1])
                q = np.array([1 - pos, pos])
        if task != "multilabel" and rule == "max" and p.shape[1] == 2:
            q = np.array([1 - q[1], q[1]])  # the most suspicious image's risk, as a distribution
        elif task != "multilabel":
            q = q / q.sum()
        out_p.append(q)
        ys = y[m]
        if task == "multilabel":
            out_y.append(ys.max(0))
        elif p.shape[1] == 2:
            out_y.append(int(ys.max()))
        else:
            vals, counts = np.unique(ys, return_counts=True)
            out_y.append(int(vals[np.argmax(counts)]))
    return np.array(out_p), np.array(out_y), ids[order]


def group_level(probs, y, groups, rule: str, task: str, class_names: list[str], column: str) -> dict:
    """Metrics over groups (patients) instead of images, with the rule and the counts they came from."""
    p, yy, ids = aggregate_groups(probs, y, groups, rule, task)
    m = compute_metrics(yy, p, task, class_names)
    m.update(column=column, rule=rule, images=int(len(y)), groups=int(len(ids)))
    return m


def subgroup_metrics(probs, y, values, task: str, class_names: list[str], column: str) -> dict:
    """Per value of ``column``: n, ACC, AUC (95 % CI), sensitivity and specificity (Wilson CIs); the largest AUC gap."""
    probs, y, values = np.asarray(probs), np.asarray(y), np.asarray(values).astype(str)
    out: dict = {"column": column, "values": {}}
    for v in sorted(set(values.tolist())):
        m = values == v
        rec: dict = {"n": int(m.sum())}
        if m.sum() >= MIN_SUBGROUP:
            full = compute_metrics(y[m], probs[m], task, class_names, n_boot=300)
            rec.update({k: full[k] for k in ("acc", "auc", "auc_ci95", "sensitivity", "specificity") if k in full})
            if task != "multilabel" and probs.shape[1] == 2:
                cm = np.asarray(full["confusion"])
                tn, fp, fn, tp = int(cm[0, 0]), int(cm[0, 1]), int(cm[1, 0]), int(cm[1, 1])
                rec["sensitivity_ci95"] = wilson_ci(tp, tp + fn)
                rec["specificity_ci95"] = wilson_ci(tn, tn + fp)
                rec["positives"] = tp + fn
        else:
            rec["note"] = f"fewer than {MIN_SUBGROUP} cases: no metrics"
        out["values"][v or "(blank)"] = rec
    aucs = {k: r["auc"] for k, r in out["values"].items() if r.get("auc") == r.get("auc") and "auc" in r}
    if len(aucs) >= 2:
        lo, hi = min(aucs, key=aucs.get), max(aucs, key=aucs.get)
        out["largest_auc_gap"] = {"gap": float(aucs[hi] - aucs[lo]), "weakest": lo, "strongest": hi}
    return out
