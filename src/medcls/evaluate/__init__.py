"""Evaluation as clinical papers report it: metrics.json, plots and an HTML report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medcls.evaluate.metrics import auc_score, bootstrap_auc_ci, compute_metrics, reliability

__all__ = ["evaluate_run", "compute_metrics", "auc_score", "bootstrap_auc_ci", "write_outputs"]


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_outputs(root: Path, meta: dict, results: dict[str, tuple], dataset_name: str) -> dict:
    """Merge per-split metrics into ``metrics.json``; draw plots; write ``report.html``."""
    from medcls._atomic import write_json
    from medcls.evaluate.plots import plot_confusion, plot_curves, plot_reliability, plot_roc
    from medcls.evaluate.report import write_report

    task, names = meta["data"]["task"], meta["data"]["class_names"]
    mpath = root / "metrics.json"
    metrics = json.loads(mpath.read_text()) if mpath.is_file() else {}
    for split, (probs, y) in results.items():
        metrics[split] = compute_metrics(y, probs, task, names)
        metrics[split]["dataset"] = dataset_name
    write_json(mpath, metrics)
    focus = "test" if "test" in results else next(iter(results))
    probs, y = results[focus]
    plot_roc(y, probs, task, names, root / "roc.png", title=f"ROC — {dataset_name} {focus}")
    plot_confusion(metrics[focus]["confusion"], names, root / "confusion.png", title=f"{dataset_name} {focus}")
    plot_reliability(reliability(y, probs, task), root / "calibration.png", title=f"Calibration — {dataset_name} {focus}")
    refit = meta.get("refit")
    hist = root / (f"{refit['selection']}/history.csv" if refit else "history.csv")
    rows = _read_csv(hist)
    if rows:
        plot_curves(rows, root / "curves.png",
                    refit=(_read_csv(root / "history.csv"), refit["epoch"]) if refit else None)
    write_report(root, meta, metrics)
    return metrics


def evaluate_run(root: str | Path, data: str | None = None, splits=("test",), device: str = "auto",
                 data_dir: str | None = None) -> dict:
    """Evaluate a run on splits of its dataset (or of ``data``); update its outputs.

    Returns:
        the whole ``metrics.json`` content.
    """
    from medcls.errors import DataError
    from medcls.runs import load_run

    root = Path(root)
    run = load_run(root, device)
    ds = run.load_dataset(data, data_dir)
    if list(ds.class_names) != list(run.class_names) or ds.task != run.task:
        raise DataError(f"{ds.source}: its classes {list(ds.class_names)} ({ds.task}) are not the ones {root} was "
                        f"trained on, {list(run.class_names)} ({run.task}), in that order; its metrics would be "
                        "meaningless")
    refit = run.meta.get("refit")
    if refit and "val" in splits and ds.name == run.meta["data"]["name"]:
        raise DataError(f"{root} was trained again on train + val (refit), so its val split is training data; "
                        f"the validation metrics of its first pass are in {root / refit['selection']}/metrics.json")
    results = {}
    for s in splits:
        if (ds.splits == s).any():
            results[s] = run.sample_probs(ds, s)
    if not results:
        raise DataError(f"{ds.source}: no {', '.join(splits)} split to evaluate on")
    return write_outputs(root, run.meta, results, ds.name)
