"""A self-contained HTML report (plots embedded) a person can open offline."""

from __future__ import annotations

import base64
import html
import json
from datetime import datetime, timezone
from pathlib import Path

from medcls._atomic import write_text
from medcls.evaluate.model_card import model_card_html, model_card_markdown
from medcls.run_folder import RunConfig, RunFolder

__all__ = ["write_report"]

_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:.5em 0}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:85%}.muted{color:#777}"""


def _f(v, digits=3):
    if v is None:  # a metric an older run's metrics.json lacks
        return "–"
    if isinstance(v, float):
        return "–" if v != v else f"{v:.{digits}f}"
    return html.escape(str(v))


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<h3>{html.escape(alt)}</h3><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _refit_note(config: RunConfig, folder: RunFolder) -> str:
    r = config.refit
    if r is None:
        return ""
    auc = f" (validation AUC {_f(r.val_auc)})" if r.val_auc is not None else ""
    first = html.escape(f"{folder.selection.root.name}/{folder.report.name}")
    return (f"<p>Refit: a first pass trained on the {r.n_train} training images chose epoch {r.epoch} of "
            f"{r.of_epochs}{auc}; this model was then trained from scratch on train + validation "
            f"({r.n_train + r.n_val} images) up to that epoch. The validation split is training data here; "
            f'the first pass\'s own report is <a href="{first}">{first}</a>.</p>')


def write_report(folder: RunFolder, config: RunConfig, metrics: dict) -> Path:
    """``report.html`` of a run: its configuration, metrics per split and plots, in one offline file;
    and its model card, ``model_card.md``."""
    write_text(folder.model_card, model_card_markdown(config, metrics, f"{config.model_name} on {config.data.name}"))
    d = config.data
    rows = []
    for split in ("train", "val", "test"):
        top = metrics.get(split)
        if not top:
            continue
        levels = [(split, top)]
        if top.get("patient_level"):  # the same figures per patient (study, lesion), beside the images'
            g = top["patient_level"]
            levels.append((f"{split} per {g['column']} ({g['rule']})", g))
        for name, m in levels:
            ci = m.get("auc_ci95") or [float("nan")] * 2
            rows.append(f"<tr><td>{html.escape(name)}</td><td>{m.get('groups', m['n'])}</td><td>{_f(m['acc'])}</td>"
                        f"<td>{_f(m['auc'])}</td><td>{_f(ci[0])} – {_f(ci[1])}</td><td>{_f(m['sensitivity'])}</td>"
                        f"<td>{_f(m['specificity'])}</td><td>{_f(m['f1'])}</td><td>{_f(m.get('brier'))}</td>"
                        f"<td>{_f(m.get('ece'))}</td></tr>")
    per = ""
    last = next((metrics[s] for s in ("test", "val") if s in metrics), None)
    if last and last.get("per_class"):
        pr = "".join(f"<tr><td>{html.escape(n)}</td><td>{_f(v.get('sensitivity'))}</td>"
                     f"<td>{_f(v.get('specificity'))}</td><td>{_f(v.get('n', v.get('auc', '')))}</td></tr>"
                     for n, v in last["per_class"].items())
        per = ("<h2>Per class (test)</h2><table><tr><th>class</th><th>sensitivity</th><th>specificity</th>"
               f"<th>n / AUC</th></tr>{pr}</table>")
    model = config.model_name
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>medcls report: {html.escape(str(model))}</title>
<style>{_CSS}</style></head><body>
<h1>medcls report</h1>
<p class="muted">{html.escape(str(folder.root))} · written {now} · medcls {html.escape(config.version)}</p>
<table><tr><th>model</th><td>{html.escape(str(model))}</td></tr>
<tr><th>dataset</th><td>{html.escape(d.name)} ({html.escape(d.source)})</td></tr>
<tr><th>task</th><td>{html.escape(d.task)}: {html.escape(', '.join(d.class_names))}</td></tr>
<tr><th>modality</th><td>{html.escape(d.modality)}</td></tr>{_preparation_row(config)}</table>
<h2>Metrics</h2>
<table><tr><th>split</th><th>n</th><th>ACC</th><th>AUC</th><th>AUC 95% CI</th><th>sensitivity</th>
<th>specificity</th><th>F1</th><th>Brier</th><th>ECE</th></tr>{''.join(rows)}</table>
<p class="muted">Binary: sensitivity and specificity for the positive class
“{html.escape(str(last.get('positive_class', '')) if last else '')}” at the argmax decision. AUC CI: percentile bootstrap
over cases. Multi-class AUC: one-vs-rest macro, as MedMNIST reports it. Brier score and expected
calibration error (15 bins): lower is better; the reliability diagram shows what the ECE measures.</p>
{_refit_note(config, folder)}
{_operating_point(metrics)}
{_ordinal(metrics)}
{per}
{_img(folder.roc, 'ROC (test)')}
{_img(folder.confusion, 'Confusion matrix (test)')}
{_img(folder.calibration, 'Calibration (test)')}
{_img(folder.decision_curve, 'Decision curve (test): net benefit against treating all and none')}
{_img(folder.curves, 'Training curves')}
{_gallery(folder)}
{model_card_html(config, metrics)}
<p class="muted">Also as Markdown: {html.escape(folder.model_card.name)}.</p>
<h2>Configuration</h2><pre>{html.escape(json.dumps(config.to_dict(), indent=2))}</pre>
</body></html>"""
    write_text(folder.report, body)
    return folder.report


def _ci(v) -> str:
    return f"{_f(v[0])} – {_f(v[1])}" if v else "–"


def _operating_point(metrics: dict) -> str:
    """Sensitivity, specificity, PPV, NPV with Wilson CIs at the threshold chosen on validation."""
    rows, target, prev = [], None, None
    for split in ("val", "test"):
        found = (metrics.get(split) or {}).get("operating_point")
        if not found:
            continue
        target = found.get("target")
        per = found.get("per_label") or {"": found}
        for label, op in per.items():
            at = op.get("at_prevalence")
            prev = at["prevalence"] if at else prev
            extra = f"<td>{_f(at['ppv'])}</td><td>{_f(at['npv'])}</td>" if at else "<td>–</td><td>–</td>"
            name = f"{split} {html.escape(label)}".strip()
            rows.append(f"<tr><td>{name}</td><td>{_f(op['threshold'])}</td><td>{_f(op['sensitivity'])} "
                        f"({_ci(op['sensitivity_ci95'])})</td><td>{_f(op['specificity'])} "
                        f"({_ci(op['specificity_ci95'])})</td><td>{_f(op['ppv'])} ({_ci(op['ppv_ci95'])})</td>"
                        f"<td>{_f(op['npv'])} ({_ci(op['npv_ci95'])})</td>{extra}</tr>")
    if not rows:
        return ""
    return (f"<h2>Operating point ({html.escape(str(target))}, chosen on validation)</h2><table><tr><th>split</th>"
            "<th>threshold</th><th>sensitivity (95% CI)</th><th>specificity</th><th>PPV</th><th>NPV</th>"
            f"<th>PPV at prevalence {_f(prev)}</th><th>NPV at prevalence {_f(prev)}</th></tr>{''.join(rows)}</table>"
            '<p class="muted">Wilson score intervals. PPV and NPV in the split depend on its prevalence; the '
            "last two columns apply Bayes' rule at the prevalence given.</p>")


def _ordinal(metrics: dict) -> str:
    rows = [f"<tr><td>{s}</td><td>{_f(m['qwk'])}</td><td>{_f(m['mae_grade'])}</td></tr>"
            for s in ("val", "test") if (m := metrics.get(s)) and "qwk" in m]
    if not rows:
        return ""
    return ("<h2>Graded labels</h2><table><tr><th>split</th><th>quadratic-weighted kappa</th>"
            f"<th>mean absolute grade error</th></tr>{''.join(rows)}</table>")


def _gallery(folder: RunFolder) -> str:
    if not folder.gallery.is_file():
        return ""
    return (_img(folder.gallery, "Where the model looked (test)") +
            '<p class="muted">Grad-CAM maps of the predicted class over test images: for each class the most '
            "confident correct answers and the most confident errors. A map shows where the evidence for the "
            "answer lies in the network's last feature maps, not that the reason is clinically right.</p>")


def _preparation_row(config: RunConfig) -> str:
    prep = config.preparation
    if prep is None:
        return ""
    what = (prep.describe(prep.modality, config.data.is_volume) if prep.modality != "auto"
            else "each file as its DICOM modality asks (PNG/JPEG as other)")
    return f"<tr><th>files prepared as</th><td>{html.escape(what)}</td></tr>"
