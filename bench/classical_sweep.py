"""Feature sets x seeds for the classical path: how ``medcls classical --features auto`` was chosen.

    python bench/classical_sweep.py                       # every candidate, three seeds, the three sets
    python bench/classical_sweep.py --datasets breastmnist --specs hog+stats hog+stats+texture --seeds 0 1 2
    python bench/classical_sweep.py --datasets pneumoniamnist --merge   # add a set to the results file

Each job is ``medcls classical`` on one MedMNIST set with one feature set and one
seed (which draws the cross-validation folds and the SVM's / forest's
randomness): the five classifiers are tuned by cross-validation on the training
split and one is picked as the default run picks it (``selection_score``: the
mean of its cross-validated and its validation AUC). A feature set is chosen on
that same held-out score of the picked classifier, averaged over seeds and over
the sets of its kind (2-D images, volumes); the test split is reported for the
record only. Every job keeps its five classifiers' rows, so ``--summarise``
recomputes the choice from the results file without training anything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, write_results  # noqa: E402

CANDIDATES = {
    "image": ["hog+stats", "hog+stats+texture", "hog+stats+pixels", "hog+stats+texture+pixels",
              "hog+texture+pixels"],
    "volume": ["hog+stats", "shape", "shape+pixels"],
}
KIND = {"pneumoniamnist": "image", "breastmnist": "image", "adrenalmnist3d": "volume"}


def one(data: str, spec: str, seed: int, work: Path, data_dir) -> dict:
    from medcls.classical import run_classical

    out = work / f"{data}-{spec}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    best = run_classical(data, features=spec, out=out, seed=seed, data_dir=data_dir, log=lambda *_: None)
    secs = time.perf_counter() - t0
    table = json.loads((out / "comparison.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"data": data, "features": spec, "seed": seed, "classifier": best, "seconds": round(secs, 1),
            "classifiers": table}


def picked(job: dict) -> dict:
    """The job's picked classifier (by today's rule) with its scores."""
    from medcls.classical import pick_classifier, selection_score

    name = pick_classifier(job["classifiers"])
    row = next(r for r in job["classifiers"] if r["classifier"] == name)
    return {"classifier": name, "select": selection_score(row), **{k: row[k] for k in SCORES[1:]}}


SCORES = ("select", "val_auc", "cv_auc", "test_auc", "test_acc")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(KIND))
    ap.add_argument("--specs", nargs="+", default=None, help="feature sets (default: the candidates of each kind)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--name", default="classical_sweep")
    ap.add_argument("--merge", action="store_true",
                    help="keep the results file's jobs (data, features, seed) that are not run now")
    ap.add_argument("--summarise", action="store_true", help="only recompute the choice from the results file")
    a = ap.parse_args(argv)
    if a.summarise:
        old = json.loads((RESULTS / f"{a.name}.json").read_text())
        return _report(a.name, old["rows"], old.get("commands", [old["command"]]), old["machine"])
    work = Path(tempfile.mkdtemp(prefix="medcls-classical-sweep-"))
    command = "python bench/classical_sweep.py " + " ".join(argv or sys.argv[1:])
    rows, commands = [], [command]
    previous = RESULTS / f"{a.name}.json"
    if a.merge and previous.is_file():
        old = json.loads(previous.read_text())
        rerun = {(d, sp, sd) for d in a.datasets for sp in (a.specs or CANDIDATES[KIND.get(d, "image")])
                 for sd in a.seeds}
        rows = [r for r in old["rows"] if (r["data"], r["features"], r["seed"]) not in rerun]
        commands = [*old.get("commands", [old["command"]]), command]
    try:
        for data in a.datasets:
            for spec in a.specs or CANDIDATES[KIND.get(data, "image")]:
                for seed in a.seeds:
                    r = one(data, spec, seed, work, a.data_dir)
                    rows.append(r)
                    p = picked(r)
                    print(f"{data:15s} {spec:28s} s{seed} {p['classifier']:6s} cv {p['cv_auc']:.3f} "
                          f"val {p['val_auc']:.3f} (test {p['test_auc']:.3f} / {p['test_acc']:.3f}) "
                          f"{r['seconds']:.0f}s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _report(a.name, rows, commands, machine())


def _report(name: str, rows: list[dict], commands: list[str], where: dict) -> int:
    summary = summarise(rows)
    # a kind's choice counts only feature sets measured on every set of that kind
    full = {kind: {k: v for k, v in s.items() if len(v["per_set"]) == len({r["data"] for r in rows
                                                                         if KIND.get(r["data"], "image") == kind})}
            for kind, s in summary.items()}
    chosen = {kind: max(s, key=lambda k: s[k]["select"]) for kind, s in full.items() if s}
    print("\nkind    features                      held-out  val AUC  cv AUC   test AUC  test ACC  "
          "(picked classifier; mean over sets and seeds)")
    for kind, s in summary.items():
        for spec, m in sorted(s.items(), key=lambda kv: -kv[1]["select"]):
            mark = "  <- chosen" if spec == chosen.get(kind) else ""
            print(f"{kind:7s} {spec:28s} {m['select']:.4f}    {m['val_auc']:.4f}   {m['cv_auc']:.4f}   "
                  f"{m['test_auc']:.4f}    {m['test_acc']:.4f}{mark}")
    out = write_results(name, {"machine": where, "command": commands[-1], "commands": commands,
                               "seeds": sorted({r["seed"] for r in rows}), "rows": rows, "summary": summary,
                               "chosen": chosen})
    print(f"\nwrote {out}")
    return 0


def summarise(rows: list[dict]) -> dict:
    """Per kind and feature set: the picked classifier's scores, averaged over seeds, then over sets."""
    out: dict = {}
    for kind in dict.fromkeys(KIND.get(r["data"], "image") for r in rows):
        mine = [r for r in rows if KIND.get(r["data"], "image") == kind]
        out[kind] = {}
        for spec in dict.fromkeys(r["features"] for r in mine):
            per_set = {}
            for data in dict.fromkeys(r["data"] for r in mine):
                ps = [picked(r) for r in mine if r["data"] == data and r["features"] == spec]
                if ps:
                    per_set[data] = {k: float(np.mean([p[k] for p in ps])) for k in SCORES}
                    per_set[data]["classifiers"] = [p["classifier"] for p in ps]
            out[kind][spec] = {k: float(np.mean([v[k] for v in per_set.values()])) for k in SCORES} | {
                "per_set": per_set}
    return out


if __name__ == "__main__":
    sys.exit(main())
