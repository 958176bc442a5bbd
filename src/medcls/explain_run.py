"""Explaining a trained run on the files a user hands in: a heat map over each image as they know it.

For every file (or series) this writes ``<name>.png`` (the map over the image in
its own geometry and window, with the class, its probability and a colour bar)
and ``<name>.json`` (class, probabilities, method, layer, and the map's peak in
the file's pixel coordinates). Volumes get a map per slice; the figure shows the
most decisive slices (highest probability of the class explained).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcls._atomic import write_json
from medcls.errors import MedclsError, ReadError
from medcls.evaluate.plots import plot_saliency
from medcls.explain import METHODS, explain, randomisation_correlation
from medcls.modalities import for_display, resize, volume_slices
from medcls.runs import CNNRun

__all__ = ["FileExplanation", "explain_files", "resolve_target", "sanity", "check_explainable"]


@dataclass
class FileExplanation:
    path: str
    record: dict  # what the JSON beside the figure holds
    figure: Path
    warnings: list[str] = field(default_factory=list)


def check_explainable(run) -> CNNRun:
    """The run itself when it is a CNN run; a one-line refusal for the others."""
    if isinstance(run, CNNRun):
        return run
    kind = run.config.kind
    if kind == "classical":
        feats = run.config.train.get("features", "hand-made features")
        raise MedclsError(f"{run.root} is a classical pipeline on {feats} features: heat maps need a CNN run "
                          "(its decisions rest on feature vectors, not on pixels a gradient can reach)")
    raise MedclsError(f"{run.root} is an {kind}: explain one of its member runs "
                      f"({', '.join(run.config.members or [])})")


def resolve_target(run, target: str | None) -> int | None:
    """A class given by name or index, as an output index (``None``: the predicted class)."""
    if target is None:
        return None
    names = list(run.class_names)
    if target in names:
        return names.index(target)
    if re.fullmatch(r"\d+", target) and int(target) < len(names):
        return int(target)
    raise MedclsError(f"unknown class {target!r}; the run's classes are {', '.join(names)} (or 0..{len(names) - 1})")


def _sources(arr: np.ndarray, meta, prep) -> list[np.ndarray]:
    """The 2-D image in the file behind each prepared item, in ``prepare``'s order."""
    if getattr(meta, "is_volume", False):
        vols = list(arr) if arr.ndim == 4 else [arr]
        return [s for v in vols for s in volume_slices(v, prep.volume_axis)]
    if getattr(meta, "frames", 1) > 1 and arr.ndim >= 3:
        return list(arr)
    return [arr]


def _on_file_grid(heat: np.ndarray, shape: tuple[int, int], box) -> np.ndarray:
    """A map at the model's input size placed on the file's pixel grid (inside the crop box, if any)."""
    if box is None:
        return np.clip(resize(heat, shape), 0, 1)
    r0, c0, r1, c1 = box
    full = np.zeros(shape, np.float32)
    full[r0:r1, c0:c1] = np.clip(resize(heat, (r1 - r0, c1 - c0)), 0, 1)
    return full


def _stem(path, uid, taken: set[str]) -> str:
    p = Path(path)
    base = p.name.split(".")[0] or "image"
    if uid:
        base += f"_{uid[-12:]}"
    stem, k = base, 1
    while stem in taken:
        k += 1
        stem = f"{base}_{k}"
    taken.add(stem)
    return stem


def explain_files(run, paths, out: str | Path, method: str = "gradcam", target: str | None = None, *,
                  layer: str | None = None, top: int = 3, allow_gaps: bool = False,
                  allow_nonfinite: bool = False) -> list:
    """One :class:`FileExplanation` or :class:`~medcls.errors.ReadError` per path (or ``(folder, uid)``)."""
    run = check_explainable(run)
    if method not in METHODS:
        raise MedclsError(f"unknown explanation method {method!r}; choose from {', '.join(METHODS)}")
    k_asked = resolve_target(run, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    results = []
    for p in paths:
        p, uid = p if isinstance(p, tuple) else (p, None)
        try:
            read = run.read_prepared(p, uid, allow_gaps=allow_gaps, allow_nonfinite=allow_nonfinite)
        except ReadError as exc:
            results.append(exc)
            continue
        arr, meta, items, notes = read.array, read.meta, read.items, read.notes
        item_probs = run.predict_items(items)
        probs = item_probs.mean(0)
        k = int(probs.argmax()) if k_asked is None else k_asked
        e = explain(run, items, method, target=k, layer=layer)
        order = np.argsort(-item_probs[:, k], kind="stable")[:max(1, top)]
        if getattr(run, "whole_volume", False):
            panels, decisive = _volume_panels(run, items, e.maps, item_probs, k, order, meta)
        else:
            panels, decisive = _item_panels(run, arr, meta, items, e.maps, item_probs, k, order)
        stem = _stem(p, uid, taken)
        figure = out / f"{stem}.png"
        verdict = run.class_names[int(probs.argmax())]
        title = (f"{Path(p).name}: {verdict} ({probs.max():.3f}); map of {run.class_names[k]} by {method}"
                 + (f" at {e.layer}" if e.layer else ""))
        plot_saliency(panels, figure, title)
        record = {"path": str(p), "class": verdict, "probabilities": {n: round(float(v), 6) for n, v in
                                                                         zip(run.class_names, probs)},
                  "explained": run.class_names[k], "method": method, "layer": e.layer, "items": len(items),
                  "peak": decisive[0], "decisive": decisive, "figure": figure.name}
        if uid:
            record["series_uid"] = uid
        if notes:
            record["warnings"] = notes
        write_json(out / f"{stem}.json", record)
        results.append(FileExplanation(str(p), record, figure, notes))
    return results


def _item_panels(run, arr, meta, items, maps, item_probs, k: int, order) -> tuple[list, list]:
    """2-D items: each chosen item's map on its own image (slice, frame), on the file's pixel grid."""
    prep = run.preparation
    sources = _sources(arr, meta, prep)
    family = prep.family_of(meta.modality)
    panels, decisive = [], []
    for i in order:
        src = sources[min(int(i), len(sources) - 1)]
        shown, box = for_display(src, meta.window, family, prep)
        heat = _on_file_grid(maps[i], shown.shape[:2], box)
        r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
        where = {"row": int(r), "col": int(c)}
        if len(items) > 1:
            where = {("slice" if meta.is_volume else "frame"): int(i), **where}
        decisive.append({**where, "probability": round(float(item_probs[i, k]), 6)})
        caption = (f"{'slice' if meta.is_volume else 'frame'} {int(i)}: " if len(items) > 1 else "") + \
            f"p({run.class_names[k]}) = {item_probs[i, k]:.3f}"
        panels.append((shown, heat, caption))
    return panels, decisive


def _volume_panels(run, items, maps, item_probs, k: int, order, meta) -> tuple[list, list]:
    """Whole volumes (ACS / 3-D runs): the axial, coronal and sagittal planes through each map's peak.

    The planes are of the cube the model saw (its first channel). The peak is
    given in that cube's voxels and, when the whole volume was stretched to the
    cube (no ``--volume-spacing``), in the file's voxels too.
    """
    panels, decisive = [], []
    for i in order:
        vol = items[i, 0].astype(np.float32) / 255.0
        heat = maps[i]
        z, y, x = (int(v) for v in np.unravel_index(int(np.argmax(heat)), heat.shape))
        where = {"input_voxel": [z, y, x]}
        shape = tuple(getattr(meta, "shape", ()) or ())
        if run.preparation.volume_spacing is None and len(shape) >= 3:
            zyx = shape[-3:]
            where["voxel"] = [int(min(n - 1, (v + 0.5) * n / s)) for v, n, s in zip((z, y, x), zyx, heat.shape)]
        if len(items) > 1:
            where = {"time_point": int(i), **where}
        decisive.append({**where, "probability": round(float(item_probs[i, k]), 6)})
        head = f"t {int(i)}: " if len(items) > 1 else ""
        for plane, img, h in (("axial", vol[z], heat[z]), ("coronal", vol[:, y], heat[:, y]),
                              ("sagittal", vol[:, :, x], heat[:, :, x])):
            panels.append((img, h, f"{head}{plane} through the peak, p({run.class_names[k]}) = "
                                   f"{item_probs[i, k]:.3f}"))
    return panels, decisive


def sanity(run, items: np.ndarray, method: str = "gradcam", layer: str | None = None, limit: int = 16) -> float:
    """The model-randomisation test on up to ``limit`` items: rank correlation, trained vs re-initialised."""
    run = check_explainable(run)
    x = run.inputs(items[:limit])
    return randomisation_correlation(run.model, x, method, layer=layer)
