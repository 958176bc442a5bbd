"""ROC curves, confusion matrices, reliability diagrams and training curves as PNG (matplotlib, Agg)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["plot_roc", "plot_confusion", "plot_reliability", "plot_decision_curve", "plot_curves", "plot_embedding", "plot_saliency"]


def _fig():
    os.environ.setdefault("MPLCONFIGDIR", str(Path(os.environ.get("TMPDIR", "/tmp")) / "medcls-mpl"))
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from medcls._atomic import atomic_open

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())


def plot_roc(y, probs, task: str, class_names: list[str], path: Path, title: str = "") -> None:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _fig()
    fig, ax = plt.subplots(figsize=(5, 5))
    y = np.asarray(y)
    if task == "multilabel":
        curves = [(n, y[:, j], probs[:, j]) for j, n in enumerate(class_names)]
    elif probs.shape[1] == 2:
        curves = [(class_names[1], (y == 1).astype(int), probs[:, 1])]
    else:
        curves = [(n, (y == j).astype(int), probs[:, j]) for j, n in enumerate(class_names)]
    for name, yt, p in curves:
        if len(np.unique(yt)) < 2:
            continue
        fpr, tpr, _ = roc_curve(yt, p)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(yt, p):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity (false positive rate)", ylabel="sensitivity (true positive rate)",
           title=title or "ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_confusion(cm, class_names: list[str], path: Path, title: str = "") -> None:
    plt = _fig()
    cm = np.asarray(cm)
    if cm.ndim == 3:  # multi-label: one 2x2 per label; show the sum of TP/FN/FP/TN rows per label
        cm = np.array([[c[1][1], c[1][0]] for c in cm])
        rows, cols = class_names, ["predicted +", "predicted -"]
    else:
        rows = cols = class_names
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(cols), 1.0 + 0.6 * len(rows)))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    _save(fig, path)
    plt.close(fig)


def plot_reliability(rel: dict, path: Path, title: str = "") -> None:
    """Reliability diagram from :func:`medcls.evaluate.metrics.reliability`: observed rate per bin against
    the mean predicted probability, the diagonal (perfect calibration), and how many cases each bin holds."""
    plt = _fig()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfectly calibrated")
    ax.plot(rel["confidence"], rel["observed"], "o-", lw=1.5, ms=4, label=f"model (ECE {rel['ece']:.3f})")
    ax.set(ylabel="observed rate", title=title or "reliability", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="upper left", fontsize=8)
    hx.bar(rel["confidence"], rel["count"], width=0.05, color="C0", alpha=0.6)
    hx.set(xlabel=f"predicted {rel['what']}", ylabel="cases")
    _save(fig, path)
    plt.close(fig)


def plot_decision_curve(dca: dict, path: Path, title: str = "") -> None:
    """Net benefit of the model against treating every case and treating none, over threshold probabilities."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    t = dca["threshold"]
    ax.plot(t, dca["model"], lw=1.8, label="model")
    ax.plot(t, dca["treat_all"], lw=1, color="0.4", label="treat all")
    ax.plot(t, dca["treat_none"], lw=1, color="k", ls="--", label="treat none")
    top = max(max(dca["model"]), max(dca["treat_all"]), 0.01)
    ax.set(xlabel="threshold probability", ylabel="net benefit", title=title or "decision curve",
           ylim=(-0.05 * top - 0.01, top * 1.1), xlim=(0, max(t)))
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, refit: tuple[list[dict], int] | None = None) -> None:
    """Loss and validation AUC/ACC per epoch; ``refit``: (the refit pass's history, the chosen epoch)."""
    plt = _fig()
    ep = [int(float(r["epoch"])) for r in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [float(r["train_loss"]) for r in history], label="train loss")
    a.plot(ep, [float(r["val_loss"]) for r in history], label="val loss")
    if refit is not None and refit[0]:
        a.plot([int(float(r["epoch"])) for r in refit[0]], [float(r["train_loss"]) for r in refit[0]],
               label="train + val loss (refit)", color="C4")
    a.set(xlabel="epoch", ylabel="loss")
    a.legend()
    b.plot(ep, [float(r["val_auc"]) for r in history], label="val AUC", color="C2")
    b.plot(ep, [float(r["val_acc"]) for r in history], label="val ACC", color="C3")
    if refit is not None:
        for ax in (a, b):
            ax.axvline(refit[1], color="0.5", linestyle=":", label=None)
    b.set(xlabel="epoch", ylim=(0, 1.01))
    b.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _save(fig, path)
    plt.close(fig)


def plot_embedding(xy: np.ndarray, colour, path: Path, title: str, legend_names=None) -> None:
    plt = _fig()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    colour = np.asarray(colour)
    for c in np.unique(colour):
        m = colour == c
        name = legend_names[int(c)] if legend_names is not None and int(c) < len(legend_names) else str(c)
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.7, label=name)
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_saliency(panels: list[tuple[np.ndarray, np.ndarray, str]], path: Path, title: str = "",
                  alpha: float = 0.45, columns: int | None = None) -> None:
    """Heat maps over images, one panel each, with one colour bar.

    ``panels``: ``(image, map, caption)``; the image grey ``(H, W)`` or RGB
    ``(H, W, 3)`` in [0, 1] as a reader knows it, the map ``(H, W)`` in [0, 1] on
    the same pixel grid, so pixel coordinates read off the figure are the file's.
    """
    plt = _fig()
    n = len(panels)
    cols = min(n, columns or n)
    rows = -(-n // cols)
    side = 4.2 if cols <= 3 else 2.6
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 0.6, (side + 0.3) * rows), squeeze=False)
    im = None
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (img, heat, caption) in zip(axes.flat, panels):
        h, w = heat.shape
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
        im = ax.imshow(heat, cmap="jet", alpha=alpha, vmin=0, vmax=1, interpolation="bilinear",
                       extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        ax.set_title(caption, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    cbar = fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    cbar.set_label("relevance (map maximum = 1)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)
    plt.close(fig)
