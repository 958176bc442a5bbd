"""Training variants x seeds on one dataset, side by side: how the defaults were chosen.

    python bench/sweep.py --dataset breastmnist --models alexnet vgg11_bn --variants base pat8 --seeds 0 1 2

Each job is ``medcls.train.fit`` with the defaults plus one variant (table below),
run in parallel worker processes (``--workers``; on one GPU several share it).
Prints mean / sd / min of test AUC and ACC per model and variant and writes JSON.
A single seed on BreastMNIST (156 test images) moves test AUC by +-0.02, so a
variant is judged on the mean over seeds. Meant for a GPU: on 2 CPU cores one
BreastMNIST run takes 7-18 minutes.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

VARIANTS = {
    "base": dict(),  # the defaults
    "norefit": dict(refit=False),  # one pass: the epoch chosen on validation, no second pass on train + val
    "plain_ema": dict(_plain_ema=True),  # the EMA without its warm-up
    "pat8": dict(patience=8),  # the earlier fixed patience
    "ep2x": dict(_epoch_mult=2),
    "ep3x": dict(_epoch_mult=3),
    "ls0.1": dict(label_smoothing=0.1),
    "sampler": dict(balance="sampler"),
    "none_bal": dict(balance="none"),
    "lr0.5": dict(_lr_mult=0.5),
    "lr2": dict(_lr_mult=2.0),
    "wd5e-2": dict(weight_decay=0.05),
    "noaug": dict(augment="none"),
    "strong_p20": dict(augment="strong", patience=20),
    "pat20": dict(patience=20),
    "pat20_ep2x": dict(patience=20, _epoch_mult=2),
    "pat8_ep2x": dict(patience=8, _epoch_mult=2),
    "sgd": dict(optimizer="sgd"),
    "noema": dict(ema=False),
    "nohflip": dict(hflip=False),
    "hflip": dict(hflip=True),
}


def one(args):
    dataset, model, variant, seed, outdir, data_dir, n, quick, tta = args
    import contextlib
    import csv
    import io

    import medcls.train.engine as eng
    from medcls.train.config import TrainConfig

    v = dict(VARIANTS[variant])
    if v.pop("_plain_ema", False):
        from torch.optim.swa_utils import get_ema_multi_avg_fn
        eng.ema_multi_avg_fn = get_ema_multi_avg_fn
    em = v.pop("_epoch_mult", 1)
    lm = v.pop("_lr_mult", 1.0)
    cfg = TrainConfig(data=dataset, model=model, out=f"{outdir}/{dataset}-{model}-{variant}-s{seed}",
                      data_dir=data_dir, seed=seed, device=os.environ.get("MEDCLS_DEVICE", "auto"), **v)
    if em != 1:
        cfg.epochs = cfg.epochs_for(n) * em
    if lm != 1.0:
        cfg.lr = cfg.learning_rate(cfg.batch_for(n)) * lm
    if quick:
        cfg.epochs, cfg.max_train_samples, cfg.limit_eval_samples = 1, 64, 64
    t0 = time.time()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        run = eng.fit(cfg)
    m = json.load(open(f"{run}/metrics.json"))
    refit = json.load(open(f"{run}/config.json")).get("refit")
    first = f"{run}/{refit['selection']}" if refit else run  # validation belongs to a refit run's first pass
    fm = json.load(open(f"{first}/metrics.json")) if refit else m
    hist = list(csv.DictReader(open(f"{first}/history.csv")))
    best = max(hist, key=lambda r: float(r["val_auc"]))
    row = dict(dataset=dataset, model=model, variant=variant, seed=seed, secs=round(time.time() - t0, 1),
               val_auc=fm["val"]["auc"], test_auc=m["test"]["auc"],
               test_acc=m["test"]["acc"], best_epoch=int(best["epoch"]), epochs_run=len(hist), refit=bool(refit))
    if refit:  # the same seed's first pass: what --no-refit gives
        row.update(first_pass_test_auc=fm["test"]["auc"], first_pass_test_acc=fm["test"]["acc"])
    if tta:  # the same weights, each test prediction averaged with that of the mirror image
        from medcls.evaluate.metrics import auc_score
        from medcls.runs import load_run

        r = load_run(run, os.environ.get("MEDCLS_DEVICE", "auto"))
        r.meta["preprocess"]["tta"] = "flip"
        p, y = r.sample_probs(r.load_dataset(), "test")
        row.update(test_auc_flip_tta=auc_score(y, p, r.task), test_acc_flip_tta=float((p.argmax(1) == y).mean()))
    return row


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--models", nargs="+", default=["alexnet"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--quick", action="store_true", help="1 epoch on 64 images per job: a smoke test")
    ap.add_argument("--tta", action="store_true", help="also score each run with flip test-time augmentation")
    ap.add_argument("--out", default=None, help="run folders (default: a temp folder, removed at the end)")
    ap.add_argument("--json", default=None, help="default bench/results/sweep_DATASET.json")
    a = ap.parse_args()
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    import shutil
    import tempfile

    from medcls.train.config import TrainConfig
    from medcls.train.engine import prepare_data

    n = len(prepare_data(TrainConfig(data=a.dataset, data_dir=a.data_dir))[1]["train"].y)  # items per epoch
    out = a.out or tempfile.mkdtemp(prefix="medcls-sweep-")
    a.json = a.json or str(Path(__file__).resolve().parent / "results" / f"sweep_{a.dataset}.json")
    jobs = [(a.dataset, m, v, s, out, a.data_dir, n, a.quick, a.tta)
            for m in a.models for v in a.variants for s in a.seeds]
    rows = []
    import multiprocessing as mp

    with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as ex:
        for r in ex.map(one, jobs):
            rows.append(r)
            print(json.dumps(r), flush=True)
            from medcls._atomic import write_json

            write_json(Path(a.json), {"machine": machine(), "command": "python bench/sweep.py " + " ".join(sys.argv[1:]),
                                      "rows": rows})
    if a.out is None:
        shutil.rmtree(out, ignore_errors=True)
    import numpy as np

    print(f"\n{'model':10s} {'variant':14s} {'valAUC':>7s} {'testAUC':>8s} {'sd':>5s} {'min':>5s} "
          f"{'testACC':>8s} {'sd':>5s} {'min':>5s} {'secs':>6s}")
    for m in a.models:
        for v in a.variants:
            rr = [r for r in rows if r["model"] == m and r["variant"] == v]
            if not rr:
                continue
            ta = np.array([r["test_auc"] for r in rr])
            tc = np.array([r["test_acc"] for r in rr])
            print(f"{m:10s} {v:14s} {np.mean([r['val_auc'] for r in rr]):7.3f} {ta.mean():8.3f} {ta.std():5.3f} "
                  f"{ta.min():5.3f} {tc.mean():8.3f} {tc.std():5.3f} {tc.min():5.3f} "
                  f"{np.mean([r['secs'] for r in rr]):6.1f}")
            if all("first_pass_test_auc" in r for r in rr):  # the same seeds' first pass: --no-refit
                fa = np.array([r["first_pass_test_auc"] for r in rr])
                fc = np.array([r["first_pass_test_acc"] for r in rr])
                print(f"{'':10s} {'first pass':14s} {'':7s} {fa.mean():8.3f} {fa.std():5.3f} {fa.min():5.3f} "
                      f"{fc.mean():8.3f} {fc.std():5.3f} {fc.min():5.3f}   refit - first pass: AUC "
                      f"{(ta - fa).mean():+.3f}, higher for {int((ta > fa).sum())}/{len(ta)} seeds")
            if a.tta:
                tf = np.array([r["test_auc_flip_tta"] for r in rr])
                print(f"{'':10s} {'+ flip TTA':14s} {'':7s} {tf.mean():8.3f} {tf.std():5.3f} {tf.min():5.3f} "
                      f"{np.mean([r['test_acc_flip_tta'] for r in rr]):8.3f}")
