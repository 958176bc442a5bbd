"""Evaluation as clinical papers report it: metrics.json, plots and an HTML report.

Given the probabilities a run gave on each split, :func:`write_outputs` writes
the run folder's ``metrics.json``, ROC, confusion, calibration and training
curves and its ``report.html``. Getting those probabilities from a trained run
is :func:`medcls.runs.evaluate_run`'s job.
"""

from __future__ import annotations

from medcls.evaluate.metrics import auc_score, bootstrap_auc_ci, compute_metrics, reliability
from medcls.evaluate.plots import plot_confusion, plot_curves, plot_reliability, plot_roc
from medcls.evaluate.report import write_report
from medcls.run_folder import RunConfig, RunFolder

__all__ = ["write_outputs", "compute_metrics", "auc_score", "bootstrap_auc_ci"]


def write_outputs(folder: RunFolder, config: RunConfig, results: dict[str, tuple], dataset_name: str) -> dict:
    """Merge per-split metrics into ``metrics.json``; draw plots; write ``report.html``.

    Args:
        results: ``{split: (probabilities per sample, labels)}``.

    Returns:
        the whole ``metrics.json`` content.
    """
    task, names = config.data.task, config.data.class_names
    metrics = folder.read_metrics()
    for split, (probs, y) in results.items():
        metrics[split] = compute_metrics(y, probs, task, names)
        metrics[split]["dataset"] = dataset_name
    folder.write_metrics(metrics)
    focus = "test" if "test" in results else next(iter(results))
    probs, y = results[focus]
    plot_roc(y, probs, task, names, folder.roc, title=f"ROC — {dataset_name} {focus}")
    plot_confusion(metrics[focus]["confusion"], names, folder.confusion, title=f"{dataset_name} {focus}")
    plot_reliability(reliability(y, probs, task), folder.calibration,
                     title=f"Calibration — {dataset_name} {focus}")
    refit = config.refit
    rows = (folder.selection if refit else folder).read_history()
    if rows:
        plot_curves(rows, folder.curves, refit=(folder.read_history(), refit.epoch) if refit else None)
    write_report(folder, config, metrics)
    return metrics
