"""Semi-supervised gain: the same labelled subset, with and without the unlabelled images.

    python bench/semi.py                       # PneumoniaMNIST, 5 % and 10 % labels, seeds 0-2
    python bench/semi.py --quick               # smoke run
    python bench/semi.py --fractions 0.05 --methods fixmatch --model vgg11_bn --epochs 20 --seeds 0

For each labelled fraction and seed, a supervised run on the labelled subset only
(the same stratified subset: the seed draws it) is the baseline; each
semi-supervised method trains on that subset plus the remaining training images
without labels. A seed moves test AUC by about as much as the methods gain, so
each method is reported as the mean +- sd over seeds, with its gain over the
baseline of the same seed: the mean, and on how many seeds it was above zero.
Printed and written to bench/results/semi.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402


def _run(work: Path, tag: str, **kw) -> dict:
    from medcls.runs import evaluate_after_training
    from medcls.train.config import TrainConfig
    from medcls.train.engine import fit

    out = work / tag
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    evaluate_after_training(fit(TrainConfig(out=str(out), **kw)))
    m = json.loads((out / "metrics.json").read_text())["test"]
    return {"acc": m["acc"], "auc": m["auc"], "auc_ci95": m["auc_ci95"], "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="pneumoniamnist")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.10])
    ap.add_argument("--methods", nargs="+", default=["pseudo", "fixmatch", "meanteacher"])
    ap.add_argument("--model", default="vgg11_bn")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="medcls-semi-"))
    try:
        return _bench(a, argv, work)
    finally:  # run folders hold weights and optimiser state
        shutil.rmtree(work, ignore_errors=True)


def _bench(a, argv, work: Path) -> int:
    import numpy as np

    base = dict(data=a.data, model=a.model, data_dir=a.data_dir, epochs=1 if a.quick else a.epochs)
    if a.quick:
        base.update(max_train_samples=400, model="alexnet_onetower")
    seeds = a.seeds[:1] if a.quick else a.seeds
    res = {"machine": machine(), "command": " ".join(["python bench/semi.py", *(argv or sys.argv[1:])]),
           "data": a.data, "model": base["model"], "epochs": base["epochs"], "seeds": seeds, "fractions": {}}
    for f in a.fractions:
        runs = {name: [] for name in ["supervised", *a.methods]}
        for seed in seeds:
            sup = _run(work, f"sup-{f}-{seed}", labelled_fraction=f, seed=seed, **base)
            runs["supervised"].append(dict(seed=seed, **sup))
            for m in a.methods:
                r = _run(work, f"{m}-{f}-{seed}", labelled_fraction=f, semi=m, seed=seed, **base)
                runs[m].append(dict(seed=seed, **r, auc_gain=r["auc"] - sup["auc"], acc_gain=r["acc"] - sup["acc"]))
        rows = {}
        for name, rr in runs.items():
            row = {k: float(np.mean([r[k] for r in rr])) for k in ("auc", "acc", "seconds")}
            row.update(auc_sd=float(np.std([r["auc"] for r in rr])), acc_sd=float(np.std([r["acc"] for r in rr])))
            if name != "supervised":  # mean of the per-seed (paired) gains, and how many were above zero
                for k in ("auc_gain", "acc_gain"):
                    row[k] = float(np.mean([r[k] for r in rr]))
                    row[k.replace("gain", "wins")] = sum(r[k] > 0 for r in rr)
            rows[name] = dict(row, runs=rr)
        res["fractions"][str(f)] = rows
        print(f"\n## {a.data}, {f:.0%} of the training labels ({base['model']}, {base['epochs']} epochs, "
              f"seeds {seeds})")
        for name, r in rows.items():
            gain = (f"  gain AUC {r['auc_gain']:+.3f} ({r['auc_wins']}/{len(seeds)}) "
                    f"ACC {r['acc_gain']:+.3f} ({r['acc_wins']}/{len(seeds)})" if "auc_gain" in r else "")
            print(f"{name:12s} AUC {r['auc']:.3f}±{r['auc_sd']:.3f}  ACC {r['acc']:.3f}±{r['acc_sd']:.3f}  "
                  f"{r['seconds']:.0f}s{gain}")
    out = write_results("semi_quick" if a.quick else "semi", res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
