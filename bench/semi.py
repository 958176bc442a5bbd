"""Semi-supervised gain: the same labelled subset, with and without the unlabelled images.

    python bench/semi.py                       # PneumoniaMNIST, 5 % and 10 % labels
    python bench/semi.py --quick               # smoke run
    python bench/semi.py --fractions 0.05 --methods fixmatch --model vgg11_bn --epochs 20

For each labelled fraction, a supervised run on the labelled subset only (the
same stratified subset, same seed) is the baseline; each semi-supervised method
trains on that subset plus the remaining training images without labels. Test
AUC/ACC and the gain over the baseline are printed and written to
bench/results/semi.json.
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
    from medcls.train.config import TrainConfig
    from medcls.train.engine import fit

    out = work / tag
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    fit(TrainConfig(out=str(out), **kw))
    m = json.loads((out / "metrics.json").read_text())["test"]
    return {"acc": m["acc"], "auc": m["auc"], "auc_ci95": m["auc_ci95"], "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="pneumoniamnist")
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.10])
    ap.add_argument("--methods", nargs="+", default=["pseudo", "fixmatch", "meanteacher"])
    ap.add_argument("--model", default="vgg11_bn")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="medcls-semi-"))
    try:
        return _bench(a, argv, work)
    finally:  # run folders hold weights and optimiser state
        shutil.rmtree(work, ignore_errors=True)


def _bench(a, argv, work: Path) -> int:
    base = dict(data=a.data, model=a.model, seed=a.seed, data_dir=a.data_dir,
                epochs=1 if a.quick else a.epochs)
    if a.quick:
        base.update(max_train_samples=400, model="alexnet_onetower")
    res = {"machine": machine(), "command": "python bench/semi.py " + " ".join(argv or sys.argv[1:]),
           "data": a.data, "model": base["model"], "epochs": base["epochs"], "fractions": {}}
    for f in a.fractions:
        rows = {"supervised": _run(work, f"sup-{f}", labelled_fraction=f, **base)}
        for m in a.methods:
            rows[m] = _run(work, f"{m}-{f}", labelled_fraction=f, semi=m, **base)
            rows[m]["auc_gain"] = rows[m]["auc"] - rows["supervised"]["auc"]
            rows[m]["acc_gain"] = rows[m]["acc"] - rows["supervised"]["acc"]
        res["fractions"][str(f)] = rows
        print(f"\n## {a.data}, {f:.0%} of the training labels ({base['model']}, {base['epochs']} epochs)")
        for name, r in rows.items():
            gain = f"  gain AUC {r['auc_gain']:+.3f} ACC {r['acc_gain']:+.3f}" if "auc_gain" in r else ""
            print(f"{name:12s} AUC {r['auc']:.3f}  ACC {r['acc']:.3f}  {r['seconds']:.0f}s{gain}")
    out = write_results("semi_quick" if a.quick else "semi", res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
