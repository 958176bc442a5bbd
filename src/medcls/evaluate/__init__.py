"""Evaluation as clinical papers report it: metrics.json, plots and an HTML report.

Given the probabilities a run gave on each split, :func:`write_outputs` writes
the run folder's ``metrics.json``, ROC, confusion, calibration and training
curves and its ``report.html``. Getting those probabilities from a trained run
is :func:`medcls.runs.evaluate_run`'s job.
"""

from __future__ import annotations

from medcls.evaluate.metrics import auc_score, bootstrap_auc_ci, compute_metrics, reliability
from medcls.evaluate.plots import plot_confusion, plot_curves, plot_decision_curve, plot_reliability, plot_roc
from medcls.evaluate.stats import at_threshold, net_benefit
from medcls.evaluate.report import write_report
from medcls.run_folder import RunConfig, RunFolder

__all__ = ["write_outputs", "compute_metrics", "auc_score", "bootstrap_auc_ci", "ordinal_metrics"]

# Decision curve analysis: threshold probabilities from 1 % to 60 %, the range in which a clinician would
# act on a risk (Vickers & Elkin 2006 plot to 50-60 %); above it "treat none" is all that is sensible.
DCA_THRESHOLDS = [round(0.01 * i, 2) for i in range(1, 61)]


def ordinal_metrics(y, probs) -> dict:
    """Graded labels (0 < 1 < 2 ...): quadratic-weighted Cohen's kappa and mean absolute grade error of argmax."""
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    y, pred = np.asarray(y).astype(int), np.asarray(probs).argmax(1)
    k = np.asarray(probs).shape[1]
    return {"qwk": float(cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k)))),
            "mae_grade": float(np.abs(pred - y).mean())}


def write_outputs(folder: RunFolder, config: RunConfig, results: dict[str, tuple], dataset_name: str,
                  extras: dict[str, dict] | None = None) -> dict:
    """Merge per-split metrics into ``metrics.json``; draw plots; write ``report.html``.

    Args:
        results: ``{split: (probabilities per sample, labels)}``.
        extras: ``{split: {...}}`` merged into a split's metrics (patient-level and subgroup results).

    Returns:
        the whole ``metrics.json`` content.
    """
    import numpy as np

    task, names = config.data.task, config.data.class_names
    binary = task != "multilabel" and len(names) == 2
    op = config.operating_point if binary or task == "multilabel" else None
    metrics = folder.read_metrics()
    for split, (probs, y) in results.items():
        m = compute_metrics(y, probs, task, names)
        m["dataset"] = dataset_name
        if op is not None and binary and "threshold" in op:  # the threshold chosen on validation, applied unchanged
            m["operating_point"] = {"target": op.get("target"), "chosen_on": op.get("chosen_on", "val"),
                                    **at_threshold(y, np.asarray(probs)[:, 1], op["threshold"], op.get("prevalence"))}
        elif op is not None and task == "multilabel" and "thresholds" in op:
            m["operating_point"] = {"target": op.get("target"), "chosen_on": op.get("chosen_on", "val"), "per_label": {
                n: at_threshold(np.asarray(y)[:, j], np.asarray(probs)[:, j], op["thresholds"].get(n, 0.5),
                                op.get("prevalence")) for j, n in enumerate(names)}}
        if binary:
            m["decision_curve"] = net_benefit(y, np.asarray(probs)[:, 1], DCA_THRESHOLDS)
        if task == "ordinal":
            m.update(ordinal_metrics(y, probs))
        m.update((extras or {}).get(split, {}))
        metrics[split] = m
    folder.write_metrics(metrics)
    focus = "test" if "test" in results else next(iter(results))
    probs, y = results[focus]
    plot_roc(y, probs, task, names, folder.roc, title=f"ROC — {dataset_name} {focus}")
    plot_confusion(metrics[focus]["confusion"], names, folder.confusion, title=f"{dataset_name} {focus}")
    plot_reliability(reliability(y, probs, task), folder.calibration,
                     title=f"Calibration — {dataset_name} {focus}")
    if binary:
        plot_decision_curve(metrics[focus]["decision_curve"], folder.decision_curve,
                            title=f"Decision curve — {dataset_name} {focus}")
    refit = config.refit
    rows = (folder.selection if refit else folder).read_history()
    if rows:
        plot_curves(rows, folder.curves, refit=(folder.read_history(), refit.epoch) if refit else None)
    write_report(folder, config, metrics)
    return metrics
