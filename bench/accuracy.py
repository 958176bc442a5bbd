"""Accuracy on the official MedMNIST test splits, beside the published tables.

    python bench/accuracy.py                 # full: default settings, may take an hour+ on 2 cores
    python bench/accuracy.py --quick         # smoke run in a few minutes
    python bench/accuracy.py --datasets pneumoniamnist --methods vgg11_bn --seeds 0 1 2
    python bench/accuracy.py --datasets breastmnist --merge   # add/replace one dataset in results/accuracy.json
    python bench/accuracy.py --datasets breastmnist --methods alexnet --seeds 0 1 2 --merge   # replace one row
    python bench/accuracy.py --datasets adrenalmnist3d --methods vgg11_bn_acs --seeds 0 1 2 --merge  # a volume form
    python bench/accuracy.py --datasets adrenalmnist3d --methods vgg11_bn_acs --seeds 2 --merge --extend  # one more seed
    python bench/accuracy.py --datasets pneumoniamnist --methods alexnet --seeds 0 1 2 --merge --work W --reuse
        # after an interruption: the runs finished in W are kept, an interrupted one resumes
    python bench/accuracy.py --datasets breastmnist --methods alexnet seeds --seeds 0 1 2 --merge --work W --reuse
        # and the ensemble of those seeds ("seeds"), judged on validation against its members

Every row of ours is trained and evaluated by this script in this run (with
`medcls train` defaults unless --quick); published rows come from
../shared/reference/published_results.json with their sources. Runs whose test
ACC equals the majority-class rate (a collapsed model) are flagged.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, published, write_results  # noqa: E402

CLASSICAL = "Classical (best of 5)"  # `medcls classical` defaults; each run records the features it used
CNN = {"alexnet": "AlexNet", "vgg11_bn": "VGG-11 (BN)", "googlenet": "GoogLeNet"}
# whole-volume forms (3-D sets only): the 2-D rows of a volume set train on 2.5-D stacks of its slices
VOLUME_CNN = {f"{m}_{mode}": f"{label} {'ACS' if mode == 'acs' else '3-D'}" for m, label in CNN.items()
              for mode in ("acs", "3d")}
DATASETS = ("pneumoniamnist", "breastmnist", "adrenalmnist3d")


def majority_rate(name: str, data_dir) -> float:
    from medcls.data import load_dataset

    ds = load_dataset(name, data_dir=data_dir)
    _, y = ds.split("test")
    return float(np.bincount(y).max() / len(y))


def _kept_run(out: Path, model: str, data: str, seed: int, quick: bool) -> str | None:
    """With --reuse: "finished" or "interrupted" when ``out`` holds this run's folder, else None."""
    from medcls.errors import MedclsError
    from medcls.run_folder import RunFolder

    folder = RunFolder(out)
    try:
        t = folder.read_config().train or {}
    except MedclsError:
        return None
    if (t.get("data"), t.get("model"), t.get("seed"), t.get("max_train_samples") is not None) != \
            (data, model, seed, quick):
        return None
    if folder.metrics.is_file():
        return "finished"
    return "interrupted" if folder.resumable() is not None else None


def _trained_seconds(out: Path) -> float:
    """The training time a run folder's history records (its epochs, over every resumption)."""
    from medcls.run_folder import RunFolder

    return sum(float(r["seconds"]) for r in RunFolder(out).read_history())


def run_cnn(model: str, data: str, seed: int, quick: bool, work: Path, data_dir, reuse: bool = False) -> dict:
    from medcls.run_folder import RunFolder
    from medcls.runs import evaluate_after_training
    from medcls.train.config import TrainConfig
    from medcls.train.engine import fit

    out = work / f"{data}-{model}-s{seed}"
    kept = _kept_run(out, model, data, seed, quick) if reuse else None
    if kept is None:
        shutil.rmtree(out, ignore_errors=True)
    kw = dict(epochs=1, max_train_samples=128, volume_slices=2, limit_eval_samples=128) if quick else {}
    cfg = TrainConfig(data=data, model=model, out=str(out), seed=seed, data_dir=data_dir, **kw)
    t0 = time.perf_counter()
    if kept == "interrupted":  # on with its own configuration, as `medcls train --resume` goes on
        t = RunFolder(out).read_config().train
        evaluate_after_training(fit(TrainConfig.from_dict({**t, "out": str(out)}), resume=True))
    elif kept is None:
        evaluate_after_training(fit(cfg))
    secs = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())["test"]
    meta = json.loads((out / "config.json").read_text())
    if kept:  # part or all of it trained by an earlier invocation: the epochs' own times, summed
        secs = _trained_seconds(out)
    row = {"run": str(out), "seed": seed, "acc": m["acc"], "auc": m["auc"], "auc_ci95": m["auc_ci95"],
           "seconds": round(secs, 1), "epochs": meta["schedule"]["epochs"], **({"reused": kept} if kept else {})}
    # validation AUC of the weights that never saw the validation split: the first pass of a refit run
    first = _first_pass(out).read_metrics()
    row["val_auc"] = first["val"]["auc"]
    if meta.get("refit"):  # the first pass alone is what --no-refit gives: report it beside
        row.update(refit_epoch=meta["refit"]["epoch"], first_pass_acc=first["test"]["acc"],
                   first_pass_auc=first["test"]["auc"])
    return row


def _first_pass(run: str | Path):
    """The run folder whose weights were chosen on validation: a refit run's first pass, else the run itself."""
    from medcls.run_folder import RunFolder

    folder = RunFolder(run)
    return folder.selection if folder.read_config().refit is not None else folder


def run_classical(data: str, quick: bool, work: Path, data_dir) -> dict:
    from medcls.classical import run_classical as _run
    from medcls.runs import evaluate_after_training

    out = work / f"{data}-classical"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    best = _run(data, classifier="all", out=out, data_dir=data_dir, quick=quick, log=lambda *_: None)
    evaluate_after_training(out)
    secs = time.perf_counter() - t0
    m = json.loads((out / "metrics.json").read_text())["test"]
    features = json.loads((out / "config.json").read_text())["features"]
    return {"run": str(out), "acc": m["acc"], "auc": m["auc"], "auc_ci95": m["auc_ci95"], "seconds": round(secs, 1),
            "classifier": best, "features": features}


def run_ensemble(rows: list[dict], out: Path) -> dict:
    """The runs of ``rows`` with their probabilities averaged (`medcls ensemble`), as a row of its own.

    Its test figures are those of the runs as trained (refit where the defaults
    refit). Whether averaging pays is judged on validation: the ensemble of the
    members' first passes (weights that never trained on the validation split)
    against the members' own validation AUC. Its time is what the row costs from
    nothing: the members' training and its own evaluation.
    """
    from medcls.run_folder import RunFolder
    from medcls.runs import evaluate_after_training, evaluate_run, make_ensemble

    firsts = out.with_name(out.name + "-first-pass")
    for d in (out, firsts):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    evaluate_after_training(make_ensemble([r["run"] for r in rows], out))
    secs = time.perf_counter() - t0
    metrics = RunFolder(out).read_metrics()
    m, val = metrics["test"], (metrics.get("val") or {}).get("auc")
    passes = [_first_pass(r["run"]).root for r in rows]
    if passes != [Path(r["run"]) for r in rows]:  # refit runs trained on validation: judge their first passes
        evaluate_run(make_ensemble(passes, firsts), splits=("val",))
        val = RunFolder(firsts).read_metrics()["val"]["auc"]
    members = [r["val_auc"] for r in rows if "val_auc" in r]
    return {"run": str(out), "acc": m["acc"], "auc": m["auc"], "auc_ci95": m["auc_ci95"],
            "seconds": round(sum(r["seconds"] for r in rows) + secs, 1), "members": [r["run"] for r in rows],
            "seeds": [_seed(r) for r in rows], "val_auc": val,
            **({"members_val_auc_mean": float(np.mean(members)),
                "members_val_auc_below": sum(v < val for v in members)} if len(members) == len(rows) else {})}


def family_ensembles(families: dict[str, list[dict]], data: str, work: Path) -> list[dict]:
    """For each seed every family ran: the ensemble of the families' runs of that seed."""
    seeds = sorted(set.intersection(*({_seed(r) for r in runs} for runs in families.values())))
    return [{**run_ensemble([next(r for r in runs if _seed(r) == s) for runs in families.values()],
                            work / f"{data}-ensemble-s{s}"), "seed": s, "families": list(families)} for s in seeds]


def seed_ensemble(rows: list[dict], label: str, data: str, work: Path) -> dict:
    """One model's runs over several seeds, averaged."""
    return run_ensemble(rows, work / f"{data}-{re.sub(r'[^a-z0-9]+', '_', label.lower()).strip('_')}-seeds")


def summarise(rows: list[dict]) -> dict:
    acc = [r["acc"] for r in rows]
    auc = [r["auc"] for r in rows]
    return {"acc_mean": float(np.mean(acc)), "acc_sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
            "auc_mean": float(np.mean(auc)), "auc_sd": float(np.std(auc, ddof=1)) if len(auc) > 1 else 0.0,
            "seconds_mean": float(np.mean([r["seconds"] for r in rows])), "runs": rows,
            **({"first_pass_auc_mean": float(np.mean([r["first_pass_auc"] for r in rows])),
                "first_pass_acc_mean": float(np.mean([r["first_pass_acc"] for r in rows]))}
               if all("first_pass_auc" in r for r in rows) else {})}


def reference_rows(pub: dict, data: str) -> list[dict]:
    rows = []
    for block in ("medmnist_v2_2d", "medmnist_v2_3d", "medmnist_plus"):
        b = pub.get(block, {})
        for method, (auc, acc) in b.get(data, {}).items():
            rows.append({"method": method, "auc": auc, "acc": acc, "source": b.get("source", block)})
    if data == "pneumoniamnist" and "kermany_2018" in pub:
        k = pub["kermany_2018"]["pneumonia_vs_normal"]
        rows.append({"method": "Kermany et al. 2018 (Inception-v3, full resolution)", "auc": k["auc"],
                     "acc": k["acc"], "source": pub["kermany_2018"]["source"]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 epoch on 128 images per run: a smoke test")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS))
    ap.add_argument("--methods", nargs="+", default=["classical", *CNN, "ensemble"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--work", default=None, help="where run folders go (default: a temp folder)")
    ap.add_argument("--name", default=None, help="results file name (default accuracy / accuracy_quick)")
    ap.add_argument("--merge", action="store_true",
                    help="keep what the results file already has for the datasets and methods not run now "
                         "(each row records the command that measured it)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --work: keep a run of this method, set and seed found there (finished: scored as it "
                         "is; interrupted: resumed) instead of training it again; its time is its epochs' own")
    ap.add_argument("--extend", action="store_true",
                    help="with --merge: add these seeds to a method's kept row (its runs of other seeds stay) "
                         "instead of replacing the row")
    a = ap.parse_args(argv)
    if a.reuse and not a.work:
        ap.error("--reuse looks for runs in the --work folder of an earlier invocation; name it")
    import tempfile

    work = Path(a.work or tempfile.mkdtemp(prefix="medcls-bench-"))
    try:
        return _bench(a, argv, work)
    finally:  # run folders (weights and optimiser state: gigabytes for VGG) go unless --work kept them
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


def _bench(a, argv, work: Path) -> int:
    pub = published()
    majority = pub.get("majority_class_rates", {})
    command = "python bench/accuracy.py " + " ".join(argv or sys.argv[1:])
    name = a.name or ("accuracy_quick" if a.quick else "accuracy")
    results = {"machine": machine(), "quick": a.quick, "command": command, "datasets": {}}
    previous = RESULTS / f"{name}.json"
    if a.merge and previous.is_file():
        old = json.loads(previous.read_text())
        if old.get("machine", {}).get("cpu") != results["machine"]["cpu"]:
            print(f"note: {previous} was measured on {old['machine'].get('cpu')}; merging anyway")
        kept, kept_machine = old.get("datasets", {}), old.get("machine")
        # a kept dataset keeps the machine it was measured on (its times are that machine's)
        results["datasets"] = {k: {**v, "machine": v.get("machine", old.get("machine"))}
                               for k, v in kept.items() if k not in a.datasets}
    else:
        kept, kept_machine = {}, None
    for data in a.datasets:
        maj = majority.get(data) or majority_rate(data, a.data_dir)
        ours: dict[str, dict] = {}
        for method in a.methods:
            if method == "classical":
                ours[CLASSICAL] = summarise([run_classical(data, a.quick, work, a.data_dir)])
            elif method in CNN or method in VOLUME_CNN:
                label = {**CNN, **VOLUME_CNN}[method]
                rows = [run_cnn(method, data, s, a.quick, work, a.data_dir, a.reuse) for s in a.seeds]
                before = (kept.get(data) or {}).get("ours", {}).get(label) if a.extend else None
                if before:  # the kept seeds' runs, measured by the kept row's command, plus this run's seeds
                    rows = [_kept_time(r, before["runs"]) for r in rows]
                    rows = [r for r in before["runs"] if _seed(r) not in a.seeds] + rows
                    rows.sort(key=_seed)
                ours[label] = summarise(rows)
                if before:
                    ours[label]["command"] = f"{before.get('command', kept[data].get('command'))} && {command}"
        if "ensemble" in a.methods:  # the CNN families of each seed, averaged
            families = {CNN[m]: ours[CNN[m]]["runs"] for m in CNN if m in a.methods and CNN[m] in ours}
            if len(families) >= 2:
                ours["Ensemble of the CNNs"] = summarise(family_ensembles(families, data, work))
        if "seeds" in a.methods:  # each model run here over several seeds (with --extend: its kept seeds too)
            from medcls.run_folder import RunFolder

            for m, label in {**CNN, **VOLUME_CNN}.items():
                runs = ours.get(label, {}).get("runs", []) if m in a.methods else []
                if len(runs) >= 2 and all(RunFolder(r["run"]).metrics.is_file() for r in runs):
                    ours[f"Ensemble of {len(runs)} {label} seeds"] = summarise([seed_ensemble(runs, label, data, work)])
                elif len(runs) >= 2:
                    print(f"note: {label}: the run folders of its kept seeds are gone; no ensemble of its seeds")
        for s in ours.values():
            s["collapsed"] = bool(any(abs(r["acc"] - maj) < 1e-9 for r in s["runs"]))
            s.setdefault("command", command)
            s["machine"] = results["machine"]
        ours = _merge_rows(kept.get(data), ours, kept_machine)
        results["datasets"][data] = {"majority_rate": maj, "ours": ours, "published": reference_rows(pub, data),
                                     "command": command, "machine": results["machine"]}
        _print_table(data, results["datasets"][data])
        order = {d: i for i, d in enumerate(DATASETS)}  # a merged dataset keeps its place in the tables
        results["datasets"] = dict(sorted(results["datasets"].items(), key=lambda kv: order.get(kv[0], len(order))))
        write_results(name, results)  # after each dataset, so a long run keeps what it finished
    out = write_results(name, results)
    print(f"\nwrote {out}")
    return 0


def _kept_time(row: dict, kept: list[dict]) -> dict:
    """A finished run scored again keeps the time its kept row has: the wall time of the invocation that trained it
    (or, where that one reused it too, the time it kept), not the epochs' own seconds."""
    same = [k for k in kept if k["run"] == row["run"] and _seed(k) == row["seed"]]
    return {**row, "seconds": same[0]["seconds"]} if row.get("reused") == "finished" and same else row


def _seed(row: dict) -> int:
    """A run's seed: recorded since --extend; older rows name it in their run folder (``...-s{seed}``)."""
    if "seed" in row:
        return int(row["seed"])
    m = re.search(r"-s(\d+)$", row["run"])
    return int(m.group(1)) if m else 0


def _merge_rows(previous: dict | None, ours: dict, machine: dict | None = None) -> dict:
    """This run's rows, plus the previous file's rows for methods not re-run (each keeps its command and machine)."""
    if not previous:
        return ours
    rows = {}
    for name, s in previous.get("ours", {}).items():
        if name.startswith(CLASSICAL[:-1]) and CLASSICAL in ours:
            continue  # rows of older runs named the classical row by its features
        if name not in ours:
            rows[name] = {**s, "command": s.get("command", previous.get("command"))}
            where = s.get("machine", previous.get("machine", machine))
            if where:
                rows[name]["machine"] = where
    rows.update(ours)
    order = [CLASSICAL, *CNN.values(), *VOLUME_CNN.values(), "Ensemble of the CNNs"]
    return dict(sorted(rows.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _print_table(data: str, d: dict) -> None:
    print(f"\n## {data}  (majority-class ACC {d['majority_rate']:.4f})")
    print(f"{'method':55s} {'AUC':>14s} {'ACC':>14s} {'time':>8s}")
    for name, s in d["ours"].items():
        sd = lambda v: f" ±{v:.3f}" if len(s["runs"]) > 1 else ""  # noqa: E731
        flag = "  COLLAPSED (majority class)" if s["collapsed"] else ""
        print(f"{'ours: ' + name:55s} {s['auc_mean']:8.3f}{sd(s['auc_sd']):6s} {s['acc_mean']:8.3f}{sd(s['acc_sd']):6s}"
              f" {s['seconds_mean']:7.0f}s{flag}")
    for r in d["published"]:
        auc = "-" if r["auc"] is None else f"{r['auc']:.3f}"
        acc = "-" if r["acc"] is None else f"{r['acc']:.3f}"
        print(f"{'published: ' + r['method']:55s} {auc:>8s}       {acc:>8s}")


if __name__ == "__main__":
    sys.exit(main())
