"""Training variants x seeds on one dataset, side by side: how the defaults are chosen.

    python bench/sweep.py --dataset breastmnist --models alexnet --variants hflip nohflip --seeds 0 1 2 3 4
    python bench/sweep.py --dataset breastmnist --models alexnet vgg11_bn --variants refit --holdout 0.2 --seeds 0 1 2 3 4

Each job is ``medcls.train.fit`` with the defaults plus one variant (table below),
run in parallel worker processes (``--workers``; on one GPU several share it).

Variants are chosen on data held out of training, never on the test split:

* by default on the **validation split** (the AUC of the epoch that validation
  chose, which flatters every variant alike);
* with ``--holdout F``, on a stratified fraction F of the **training split**
  held out of training altogether (a fold per seed) and scored like a test
  split. This is how a choice that trains on the validation split itself — the
  refit, whose second pass trains on train + val — is judged: a refit job's
  holdout AUC is compared with its own first pass's.

The table gives, per model and variant, the selection score (mean ± sd over
seeds), its paired difference from the first variant listed (or, for a refit,
from the first pass) and on how many seeds it was higher; the official test
split is reported beside, for the record only. A single seed on BreastMNIST
moves test AUC by ±0.02, so a default changes only on the mean over seeds.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

VARIANTS = {
    "base": dict(),  # the defaults
    "refit": dict(refit=True),  # a second pass on train + val up to the epoch validation chose (judge with --holdout)
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
    # the epoch rule's floor in optimiser steps (TrainConfig.min_steps), each value explicit
    "steps0": dict(min_steps=0),
    "steps300": dict(min_steps=300),
    "steps600": dict(min_steps=600),
    "steps1200": dict(min_steps=1200),
    "mixup0.2": dict(mixup=0.2),  # mixup (Zhang et al. 2018) at the strengths the paper used on ImageNet / CIFAR
    "mixup0.4": dict(mixup=0.4),
    "mixup1": dict(mixup=1.0),
    # the items upsampled before the network (--input-size): no new detail, larger maps for the stems
    "in56": dict(input_size=56),
    "in64": dict(input_size=64),
}


def holdout_copy(dataset: str, data_dir, fraction: float, seed: int, root: Path) -> Path:
    """A copy of a MedMNIST set whose test split is a stratified ``fraction`` of its training split.

    The copy keeps the set's file name, so medcls sees the same dataset (classes,
    modality, flip rule) with less to train on; the official test split is left out.
    """
    from medcls.data.medmnist import find_medmnist, parse_medmnist_name
    from medcls.io.npz import load_npz_splits
    from sklearn.model_selection import train_test_split

    name, size = parse_medmnist_name(dataset)
    src = find_medmnist(name, size, data_dir, download=False)
    parts = load_npz_splits(src)
    x, y = parts["train"]
    strata = y.reshape(len(y), -1)[:, 0] if y.ndim > 1 and y.shape[1] == 1 else (y if y.ndim == 1 else None)
    keep, held = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=strata)
    out = root / f"holdout-s{seed}"
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / src.name, train_images=x[np.sort(keep)], train_labels=y[np.sort(keep)],
             val_images=parts["val"][0], val_labels=parts["val"][1],
             test_images=x[np.sort(held)], test_labels=y[np.sort(held)])
    return out


def one(args):
    dataset, model, variant, seed, outdir, data_dir, n, quick, tta, holdout, refit = args
    import contextlib
    import csv
    import io

    import medcls.train.engine as eng
    import medcls.train.optim as optim
    from medcls.runs import evaluate_after_training, load_run
    from medcls.train.config import TrainConfig

    v = dict(VARIANTS[variant])
    if v.pop("_plain_ema", False):
        from torch.optim.swa_utils import get_ema_multi_avg_fn
        optim.ema_multi_avg_fn = eng.ema_multi_avg_fn = get_ema_multi_avg_fn
    em = v.pop("_epoch_mult", 1)
    lm = v.pop("_lr_mult", 1.0)
    if refit is not None:
        v.setdefault("refit", refit)
    train_dir = holdout_copy(dataset, data_dir, holdout, seed, Path(outdir)) if holdout else data_dir
    device = os.environ.get("MEDCLS_DEVICE", "auto")
    cfg = TrainConfig(data=dataset, model=model, out=f"{outdir}/{dataset}-{model}-{variant}-s{seed}",
                      data_dir=str(train_dir) if train_dir else None, seed=seed, device=device, **v)
    if em != 1:
        cfg.epochs = cfg.epochs_for(n) * em
    if lm != 1.0:
        cfg.lr = cfg.learning_rate(cfg.batch_for(n)) * lm
    if quick:
        cfg.epochs, cfg.max_train_samples, cfg.limit_eval_samples = 1, 64, 64
    t0 = time.time()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        run = eng.fit(cfg)
        evaluate_after_training(run, device=device)
    secs = round(time.time() - t0, 1)
    m = json.load(open(f"{run}/metrics.json"))
    refit_info = json.load(open(f"{run}/config.json")).get("refit")
    first = f"{run}/{refit_info['selection']}" if refit_info else run  # validation belongs to the first pass
    fm = json.load(open(f"{first}/metrics.json")) if refit_info else m
    hist = list(csv.DictReader(open(f"{first}/history.csv")))
    best = max(hist, key=lambda r: float(r["val_auc"]))
    row = dict(dataset=dataset, model=model, variant=variant, seed=seed, secs=secs, val_auc=fm["val"]["auc"],
               best_epoch=int(best["epoch"]), epochs_run=len(hist), refit=bool(refit_info))

    from medcls.data.medmnist import find_medmnist, parse_medmnist_name
    from medcls.evaluate.metrics import auc_score

    official = str(find_medmnist(*parse_medmnist_name(dataset), data_dir, download=False))

    def test_scores(root):  # the official test split, for the record
        if not holdout:
            mm = json.load(open(f"{root}/metrics.json"))["test"]
            return mm["auc"], mm["acc"]
        r = load_run(root, device)
        p, y = r.sample_probs(r.load_dataset(official), "test")
        return auc_score(y, p, r.task), float((p.argmax(1) == y).mean())

    row["test_auc"], row["test_acc"] = test_scores(run)
    if holdout:  # what the held-out fold says: the selection score
        row.update(holdout=holdout, holdout_auc=m["test"]["auc"], holdout_acc=m["test"]["acc"])
    if refit_info:  # the same seed's first pass: what --no-refit gives
        fa, fc = test_scores(first)
        row.update(first_pass_test_auc=fa, first_pass_test_acc=fc)
        if holdout:
            row.update(first_pass_holdout_auc=fm["test"]["auc"], first_pass_holdout_acc=fm["test"]["acc"])
    if tta:  # the same weights, each test prediction averaged with that of the mirror image
        r = load_run(run, device)
        r.config.preprocess.tta = "flip"
        p, y = r.sample_probs(r.load_dataset(official), "test")
        row.update(test_auc_flip_tta=auc_score(y, p, r.task), test_acc_flip_tta=float((p.argmax(1) == y).mean()))
    return row


def summary(rows: list[dict], models: list[str], variants: list[str]) -> list[dict]:
    """Per model and variant: the selection score over seeds, its paired gain over the reference, test beside.

    The reference is the first variant listed, paired by seed; for a refit run
    judged on a held-out fold, it is the same run's first pass.
    """
    key = "holdout_auc" if any("holdout_auc" in r for r in rows) else "val_auc"
    out = []
    for m in models:
        ref = {r["seed"]: r for r in rows if r["model"] == m and r["variant"] == variants[0]}
        for v in variants:
            rr = sorted((r for r in rows if r["model"] == m and r["variant"] == v), key=lambda r: r["seed"])
            if not rr:
                continue
            sel = np.array([r[key] for r in rr])
            s = {"model": m, "variant": v, "selected_on": key, "seeds": [r["seed"] for r in rr],
                 "score_mean": float(sel.mean()), "score_sd": float(sel.std(ddof=1)) if len(sel) > 1 else 0.0,
                 "test_auc_mean": float(np.mean([r["test_auc"] for r in rr])),
                 "test_acc_mean": float(np.mean([r["test_acc"] for r in rr])),
                 "secs_mean": float(np.mean([r["secs"] for r in rr]))}
            if all("test_auc_flip_tta" in r for r in rr):
                s.update(test_auc_flip_tta_mean=float(np.mean([r["test_auc_flip_tta"] for r in rr])),
                         test_acc_flip_tta_mean=float(np.mean([r["test_acc_flip_tta"] for r in rr])))
            if v != variants[0] and all(r["seed"] in ref for r in rr):
                gain = sel - np.array([ref[r["seed"]][key] for r in rr])
                s.update(gain_mean=float(gain.mean()), gain_positive=int((gain > 0).sum()))
            out.append(s)
            first_key = "first_pass_holdout_auc" if key == "holdout_auc" else None
            if first_key and all(first_key in r for r in rr):  # the refit against its own first pass
                fsel = np.array([r[first_key] for r in rr])
                out.append({"model": m, "variant": f"{v}, first pass", "selected_on": key,
                            "seeds": [r["seed"] for r in rr], "score_mean": float(fsel.mean()),
                            "score_sd": float(fsel.std(ddof=1)) if len(fsel) > 1 else 0.0,
                            "test_auc_mean": float(np.mean([r["first_pass_test_auc"] for r in rr])),
                            "test_acc_mean": float(np.mean([r["first_pass_test_acc"] for r in rr])),
                            "refit_gain_mean": float((sel - fsel).mean()),
                            "refit_gain_positive": int((sel > fsel).sum())})
    return out


def print_summary(table: list[dict]) -> None:
    print(f"\n{'model':10s} {'variant':22s} {'chosen on':12s} {'score':>13s} {'gain':>19s} {'test AUC':>9s} "
          f"{'test ACC':>9s}")
    for s in table:
        gain = ""
        if "gain_mean" in s:
            gain = f"{s['gain_mean']:+.3f} ({s['gain_positive']}/{len(s['seeds'])})"
        if "refit_gain_mean" in s:  # on a first pass's row: what its refit gained over it
            gain = f"refit {s['refit_gain_mean']:+.3f} ({s['refit_gain_positive']}/{len(s['seeds'])})"
        print(f"{s['model']:10s} {s['variant']:22s} {s['selected_on']:12s} {s['score_mean']:6.3f} ± "
              f"{s['score_sd']:.3f} {gain:>19s} {s['test_auc_mean']:9.3f} {s['test_acc_mean']:9.3f}")
        if "test_auc_flip_tta_mean" in s:  # the same weights with flip test-time augmentation
            print(f"{'':10s} {'+ flip TTA':22s} {'':12s} {'':13s} {'':>19s} {s['test_auc_flip_tta_mean']:9.3f} "
                  f"{s['test_acc_flip_tta_mean']:9.3f}")
    print("score: the selection AUC, mean ± sd over seeds; gain: paired by seed against the first one listed, with "
          "the seeds it was higher on (a first pass's row: its refit's gain over it); test: the official test split, "
          "for the record")


def combine(paths: list[str], variants: list[str], out: str | None) -> int:
    """One table from several sweeps of one dataset (run apart, e.g. so that a reference is trained once)."""
    from medcls._atomic import write_json

    docs = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for d in docs for r in d["rows"]]
    if len({r["dataset"] for r in rows}) != 1 or len({d["machine"]["cpu"] for d in docs}) != 1:
        raise SystemExit("--combine: the sweeps must share one dataset and one machine")
    seen = list(dict.fromkeys(r["variant"] for r in rows))
    order = [v for v in variants if v in seen] + [v for v in seen if v not in variants]
    models = list(dict.fromkeys(r["model"] for r in rows))
    commands = [c for d in docs for c in (d.get("commands") or [d["command"]])]
    table = summary(rows, models, order)
    out = out or str(Path(__file__).resolve().parent / "results" / f"sweep_{rows[0]['dataset']}.json")
    write_json(Path(out), {"machine": docs[0]["machine"], "commands": commands + [
        "python bench/sweep.py --combine " + " ".join(paths) + " --variants " + " ".join(order)],
        "rows": rows, "summary": table})
    print_summary(table)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--models", nargs="+", default=["alexnet"])
    ap.add_argument("--variants", nargs="+", default=["base"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--holdout", type=float, default=None,
                    help="hold this fraction of the training split out of training and choose on it")
    ap.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                    help="force refit on/off in every job (--no-refit: first passes only, half the time)")
    ap.add_argument("--quick", action="store_true", help="1 epoch on 64 images per job: a smoke test")
    ap.add_argument("--tta", action="store_true", help="also score each run with flip test-time augmentation")
    ap.add_argument("--out", default=None, help="run folders (default: a temp folder, removed at the end)")
    ap.add_argument("--json", default=None, help="default bench/results/sweep_DATASET.json")
    ap.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                    help="train nothing: table the rows of these sweeps' JSON files together (the first "
                         "--variants listed is the reference) and write them to --json")
    a = ap.parse_args()
    if a.combine:
        return combine(a.combine, a.variants, a.json)
    bad = [v for v in a.variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variants {bad}; known: {', '.join(VARIANTS)}")
    if a.holdout is not None and not 0 < a.holdout < 1:
        ap.error("--holdout is a fraction of the training split, between 0 and 1")
    import shutil
    import tempfile

    from medcls._atomic import write_json
    from medcls.train.config import TrainConfig
    from medcls.train.data import prepare_data

    n = len(prepare_data(TrainConfig(data=a.dataset, data_dir=a.data_dir)).train)  # items per epoch
    out = a.out or tempfile.mkdtemp(prefix="medcls-sweep-")
    a.json = a.json or str(Path(__file__).resolve().parent / "results" / f"sweep_{a.dataset}.json")
    jobs = [(a.dataset, m, v, s, out, a.data_dir, n, a.quick, a.tta, a.holdout, a.refit)
            for m in a.models for v in a.variants for s in a.seeds]
    rows = []
    import multiprocessing as mp

    command = "python bench/sweep.py " + " ".join(sys.argv[1:])
    with ProcessPoolExecutor(a.workers, mp_context=mp.get_context("spawn")) as ex:
        for r in ex.map(one, jobs):
            rows.append(r)
            print(json.dumps(r), flush=True)
            write_json(Path(a.json), {"machine": machine(), "command": command, "rows": rows,
                                      "summary": summary(rows, a.models, a.variants)})
    if a.out is None:
        shutil.rmtree(out, ignore_errors=True)
    print_summary(summary(rows, a.models, a.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
