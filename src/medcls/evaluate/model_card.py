"""A model card for a run (``RUN/model_card.md``, and a section of ``report.html``).

Mitchell et al.'s model cards (FAT* 2019), filled with the items of the CLAIM
checklist (Mongan et al., Radiology: AI 2020; 2024 update) and TRIPOD+AI
(Collins et al., BMJ 2024) that a run can state about itself: intended use,
data and splits, preparation, model, training, metrics with confidence
intervals, calibration, operating point, results per patient and per
subgroup, and the limits. What only its authors can say (the clinical
setting, how the reference standard was made, external validation) is named
as missing rather than left out in silence.
"""

from __future__ import annotations

import html
import math

from medcls.evaluate.metrics import decision_warning
from medcls.modalities import FAMILY_LIMITS, modality_family
from medcls.run_folder import RunConfig

__all__ = ["model_card_sections", "model_card_markdown", "model_card_html"]


def _n(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _ci(v) -> str:
    return f"{_n(v[0])}–{_n(v[1])}" if v else "–"


def model_card_sections(config: RunConfig, metrics: dict) -> list[tuple[str, list[str]]]:
    """The card as ``[(heading, [paragraph or bullet, ...])]``, rendered as Markdown or HTML."""
    d, t = config.data, config.train or {}
    family = modality_family(d.modality) if d.modality else "other"
    if config.preparation is not None and config.preparation.modality not in ("auto", None):
        family = config.preparation.modality
    names = ", ".join(d.class_names)
    out: list[tuple[str, list[str]]] = []
    out.append(("Intended use", [
        f"Research: classifies {d.task} labels ({names}) of {d.modality} images like those of {d.name}. "
        "Not a medical device, and not validated for clinical decisions; a site must validate it on its own "
        "population, scanners and protocols before any use on patients (CLAIM 1-3, TRIPOD+AI 3).",
    ]))
    splits = [f"{s}: {metrics[s]['n']} cases" for s in ("train", "val", "test") if metrics.get(s)]
    data = [f"Dataset {d.name} ({d.source}); task {d.task}; classes {names}."]
    if d.n_train_labelled is not None:
        data.append(f"Trained on {d.n_train_labelled} labelled samples"
                    + (f" and {d.n_train_unlabelled} unlabelled ({t.get('semi')})" if d.n_train_unlabelled else "")
                    + ("; the validation split was trained on too (refit)" if config.refit else "") + ".")
    data += [f"Evaluated on {', '.join(splits)}." if splits else "Not evaluated yet.",
             "Not stated by the run: how and by whom the reference labels were made, the inclusion and exclusion "
             "criteria, and the dates and sites of acquisition (CLAIM 7-14, TRIPOD+AI 5-7): add them."]
    out.append(("Data and splits", data))
    prep = []
    if config.preparation is not None:
        p = config.preparation
        prep.append(p.describe(p.modality, d.is_volume) if p.modality != "auto"
                    else "each file as its DICOM modality asks")
    if d.is_volume:
        prep.append(f"volumes as {d.volume_mode} items of {d.volume_slices or 'all'} slices; a volume's result is "
                    "the mean over its items")
    prep.append("Known limits of the modality: " + FAMILY_LIMITS.get(family, FAMILY_LIMITS["other"]) + ".")
    out.append(("Preparation", prep))
    m = config.model
    sched = config.schedule
    model = [f"{config.model_name}" + (f", {m.in_channels} channel(s) at {m.input_size} px" if m else "")
             + (f"; {sched.epochs} epochs, batch {sched.batch_size}, learning rate {sched.lr:g}" if sched else "")
             + (f"; optimiser {t.get('optimizer')}, seed {t.get('seed')}" if t else "") + "."]
    if t.get("input_size"):
        model.append(f"Every item resized to {t['input_size']} px (bilinear) before the network, in training and "
                     "in prediction alike.")
    if t.get("mixup"):
        model.append(f"Trained with mixup: pairs of items and their labels mixed with Beta({t['mixup']:g}, "
                     f"{t['mixup']:g}) weights.")
    if config.distributed:
        model.append(f"Trained data parallel in {config.distributed.get('world_size')} processes "
                     f"({config.distributed.get('backend')}).")
    out.append(("Model and training (CLAIM 22-27, TRIPOD+AI 9-12)", model))
    res = []
    for s in ("val", "test"):
        x = metrics.get(s)
        if not x:
            continue
        res.append(f"{s}: AUC {_n(x.get('auc'))} (95% CI {_ci(x.get('auc_ci95'))}), ACC {_n(x.get('acc'))}, "
                   f"sensitivity {_n(x.get('sensitivity'))}, specificity {_n(x.get('specificity'))} at the "
                   f"argmax decision; calibration: Brier {_n(x.get('brier'))}, ECE {_n(x.get('ece'))} (n={x['n']}).")
        op = x.get("operating_point")
        if op and "per_label" not in op:
            res.append(f"{s} at the operating point {op.get('target')} (threshold {_n(op['threshold'], 4)}, chosen "
                       f"on validation): sensitivity {_n(op['sensitivity'])} ({_ci(op['sensitivity_ci95'])}), "
                       f"specificity {_n(op['specificity'])} ({_ci(op['specificity_ci95'])}), PPV {_n(op['ppv'])}, "
                       f"NPV {_n(op['npv'])} (Wilson 95% CIs).")
        g = x.get("patient_level")
        if g:
            res.append(f"{s} per {g['column']} ({g['groups']} of {g['images']} images, {g['rule']} of the images' "
                       f"probabilities): AUC {_n(g.get('auc'))} (95% CI {_ci(g.get('auc_ci95'))}).")
        for col, sub in (x.get("subgroups") or {}).items():
            vals = "; ".join(f"{v} n={r['n']} AUC {_n(r.get('auc'))} ({_ci(r.get('auc_ci95'))})"
                             for v, r in sub["values"].items())
            gap = sub.get("largest_auc_gap")
            res.append(f"{s} by {col}: {vals}" + (f"; largest gap {_n(gap['gap'])}, weakest {gap['weakest']}"
                                                   if gap else "") + ".")
    out.append(("Performance (CLAIM 28-37, TRIPOD+AI 15-23)", res or ["No metrics yet."]))
    caveats = []
    if config.refit is not None:
        caveats.append("A refit run has no validation metrics of its own: its validation split was training "
                       "data; the first pass (RUN/selection) holds the validation figures.")
    if t.get("semi"):
        caveats.append(f"Semi-supervised ({t['semi']}) with {t.get('labelled_fraction')} of the labels.")
    for s in ("val", "test"):
        if metrics.get(s) and (warn := decision_warning(metrics[s])) is not None:
            caveats.append(f"On {s}, {warn}.")
    test = metrics.get("test") or {}
    if test and test.get("n", 0) < 200:
        caveats.append(f"The test split is small ({test['n']} cases): the intervals above are wide.")
    if d.name.endswith("mnist") or "mnist" in d.name:
        caveats.append("MedMNIST images are small (28-224 px) and pre-processed by the dataset's authors; "
                       "results may not carry over to full-resolution clinical images.")
    caveats.append("No external validation: every figure comes from splits of one dataset (TRIPOD+AI 20).")
    out.append(("Caveats", caveats))
    return out


def model_card_markdown(config: RunConfig, metrics: dict, title: str) -> str:
    lines = [f"# Model card: {title}", ""]
    for head, items in model_card_sections(config, metrics):
        lines += [f"## {head}", ""] + [f"- {i}" for i in items] + [""]
    return "\n".join(lines)


def model_card_html(config: RunConfig, metrics: dict) -> str:
    parts = ["<h2>Model card</h2>"]
    for head, items in model_card_sections(config, metrics):
        parts.append(f"<h3>{html.escape(head)}</h3><ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items)
                     + "</ul>")
    return "".join(parts)
