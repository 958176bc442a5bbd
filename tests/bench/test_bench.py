"""The bench scripts run (quick), write JSON of the documented shape, and README shows exactly the JSON."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script, tmp_path, *args):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "MEDCLS_BENCH_RESULTS": str(tmp_path), "TQDM_DISABLE": "1", "TMPDIR": str(tmp)}
    r = subprocess.run([sys.executable, str(REPO / "bench" / script), "--quick", *args], env=env,
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    left = [p.name for p in [*tmp.glob("medcls-bench-*"), *tmp.glob("medcls-semi-*")]]
    assert not left, f"the bench left its run folders behind: {left}"
    return r.stdout


def _check_accuracy(res: dict):
    assert {"machine", "quick", "command", "datasets"} <= set(res)
    for data, d in res["datasets"].items():
        assert 0 < d["majority_rate"] < 1
        assert d["ours"], data
        for name, s in d["ours"].items():
            assert {"acc_mean", "acc_sd", "auc_mean", "auc_sd", "seconds_mean", "runs", "collapsed"} <= set(s)
            for r in s["runs"]:
                assert 0 <= r["acc"] <= 1 and 0 <= r["auc"] <= 1 and r["seconds"] > 0
        for p in d["published"]:
            assert {"method", "auc", "acc", "source"} <= set(p)


def _check_speed(res: dict):
    c = res["cpu"]
    assert c["matmul_peak_gflops"] > 0
    assert c["peak_gflops"] == max(c["matmul_peak_gflops"], c["conv_peak_gflops"])
    for x in c["cnn"]:
        for k in ("train_images_per_s", "plain_train_images_per_s", "train_speedup", "infer_images_per_s",
                  "latency_p50_ms", "latency_p95_ms", "train_gflops_per_s", "train_pct_of_peak"):
            assert x[k] > 0, k
    assert c["reading"]["files"] > 0 and c["hog"]["ratio"] > 0


def _check_speed_gpu(res: dict):
    g = res["gpu"]
    assert g["name"] and res["command"].startswith("python bench/speed.py --gpu")
    for x in g["cnn"]:
        assert x["train_images_per_s"] > 0 and x["plain_train_images_per_s"] > 0
        assert x["train_speedup"] == pytest.approx(x["train_images_per_s"] / x["plain_train_images_per_s"])
    for x in g["amp"]:
        assert x["amp_speedup"] == pytest.approx(x["amp_images_per_s"] / x["fp32_images_per_s"])


def _check_volume_speed(res: dict):
    assert res["peak_gflops"] > 0 and res["command"].startswith("python bench/volume_speed.py")
    for x in res["rows"]:
        assert x["model"].endswith(("_acs", "_3d")) and x["batch"] >= 1
        assert x["ratio"] == pytest.approx(x["train_ours"] / x["train_plain"])
        assert x["peak_rss_gb"] > 0 and all(v > 0 for v in x["infer"].values())


def _check_semi(res: dict):
    assert {"machine", "command", "data", "model", "epochs", "seeds", "fractions"} <= set(res)
    for rows in res["fractions"].values():
        assert "supervised" in rows and len(rows) > 1
        sup = {r["seed"]: r for r in rows["supervised"]["runs"]}
        assert sorted(sup) == sorted(res["seeds"])
        for name, r in rows.items():
            assert 0 <= r["acc"] <= 1 and 0 <= r["auc"] <= 1 and r["seconds"] > 0
            assert r["auc"] == pytest.approx(np.mean([x["auc"] for x in r["runs"]]))
            assert r["auc_sd"] == pytest.approx(np.std([x["auc"] for x in r["runs"]]))
            if name != "supervised":  # paired with the baseline of the same seed
                gains = [x["auc"] - sup[x["seed"]]["auc"] for x in r["runs"]]
                assert r["auc_gain"] == pytest.approx(np.mean(gains))
                assert r["auc_gain"] == pytest.approx(r["auc"] - rows["supervised"]["auc"])
                assert r["acc_gain"] == pytest.approx(r["acc"] - rows["supervised"]["acc"])
                assert r["auc_wins"] == sum(g > 0 for g in gains)


@pytest.mark.slow
def test_quick_accuracy_bench_writes_its_json(tmp_path, medmnist_dir):
    # one 2-D and one 3-D set, two CNNs and their ensemble: every code path of the bench in ~2 minutes. The
    # training splits whole, as the bench reads them; small validation and test splits, which every run scores.
    from tests.conftest import medmnist_subset

    data = tmp_path / "data"
    data.mkdir()
    for name in ("breastmnist", "adrenalmnist3d"):
        medmnist_subset(medmnist_dir, name, data, {"train": None, "val": 32, "test": 64})
    out = _run("accuracy.py", tmp_path, "--datasets", "breastmnist", "adrenalmnist3d", "--data-dir", str(data),
               "--methods", "classical", "alexnet", "vgg11_bn", "ensemble")
    acc = json.loads((tmp_path / "accuracy_quick.json").read_text())
    _check_accuracy(acc)
    assert set(acc["datasets"]) == {"breastmnist", "adrenalmnist3d"}
    for d in acc["datasets"].values():
        assert set(d["ours"]) == {"Classical (best of 5)", "AlexNet", "VGG-11 (BN)", "Ensemble of the CNNs"}
        # the families of the same seed, averaged; it costs their training, and is judged on validation
        ens, members = d["ours"]["Ensemble of the CNNs"]["runs"][0], [d["ours"][k]["runs"][0] for k in
                                                                     ("AlexNet", "VGG-11 (BN)")]
        assert ens["members"] == [r["run"] for r in members] and ens["seed"] == 0
        assert ens["families"] == ["AlexNet", "VGG-11 (BN)"]
        assert ens["seconds"] >= sum(r["seconds"] for r in members)
        assert ens["members_val_auc_mean"] == pytest.approx(np.mean([r["val_auc"] for r in members]))
        assert d["ours"]["Classical (best of 5)"]["runs"][0]["features"] in ("hog+stats+texture+pixels",
                                                                            "shape+pixels")
    assert "published: ResNet-18 (28)" in out


@pytest.mark.slow
def test_quick_speed_bench_writes_its_json(tmp_path, medmnist_dir):
    _run("speed.py", tmp_path)
    _check_speed(json.loads((tmp_path / "speed_quick.json").read_text()))


def test_committed_results_have_the_schema():
    for name, check in (("accuracy", _check_accuracy), ("speed", _check_speed), ("semi", _check_semi),
                        ("speed_gpu", _check_speed_gpu), ("volume_speed", _check_volume_speed)):
        p = REPO / "bench" / "results" / f"{name}.json"
        if p.is_file():
            check(json.loads(p.read_text()))


def test_readme_tables_equal_the_json():
    sys.path.insert(0, str(REPO / "bench"))
    import report

    readme = (REPO / "README.md").read_text()
    assert report.render(readme) == readme, "run python bench/report.py"
    acc = REPO / "bench" / "results" / "accuracy.json"
    if acc.is_file():  # every number in the table is one of the JSON's
        res = json.loads(acc.read_text())
        block = readme.split("<!-- bench:accuracy -->")[1].split("<!-- /bench:accuracy -->")[0]
        for d in res["datasets"].values():
            for s in d["ours"].values():
                assert f"{s['auc_mean']:.3f}" in block and f"{s['acc_mean']:.3f}" in block
        numbers = set(re.findall(r"\b0\.\d{3}\b", block))
        known = {f"{v:.3f}" for d in res["datasets"].values() for s in d["ours"].values()
                 for v in (s["auc_mean"], s["acc_mean"], s["auc_sd"], s["acc_sd"],
                           s.get("first_pass_auc_mean", 0.0), s.get("first_pass_acc_mean", 0.0))}
        known |= {f"{v:.3f}" for d in res["datasets"].values() for p in d["published"] for v in (p["auc"], p["acc"])
                  if v is not None}
        known |= {f"{d['majority_rate']:.3f}" for d in res["datasets"].values()}
        assert numbers <= known
    gpu = REPO / "bench" / "results" / "speed_gpu.json"
    if gpu.is_file():
        block = readme.split("<!-- bench:speed -->")[1].split("<!-- /bench:speed -->")[0]
        for x in json.loads(gpu.read_text())["gpu"]["cnn"]:
            assert f"| {x['model']} | {x['size']} | {x['batch']} | {x['train_images_per_s']:.0f} |" in block
    semi = REPO / "bench" / "results" / "semi.json"
    if semi.is_file():
        block = readme.split("<!-- bench:semi -->")[1].split("<!-- /bench:semi -->")[0]
        for rows in json.loads(semi.read_text())["fractions"].values():
            for r in rows.values():
                assert f"| {r['auc']:.3f} ± {r['auc_sd']:.3f} | {r['acc']:.3f} ± {r['acc_sd']:.3f} |" in block


@pytest.mark.slow
def test_quick_semi_bench_writes_its_json(tmp_path, medmnist_dir):
    _run("semi.py", tmp_path, "--fractions", "0.1", "--methods", "pseudo", "fixmatch")
    res = json.loads((tmp_path / "semi_quick.json").read_text())
    _check_semi(res)
    assert set(res["fractions"]["0.1"]) == {"supervised", "pseudo", "fixmatch"}


def test_merge_keeps_rows_not_rerun_and_readme_names_each_rows_command(monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import accuracy
    import report

    def row(v):
        return {"acc_mean": v, "acc_sd": 0.0, "auc_mean": v, "auc_sd": 0.0, "seconds_mean": 1.0,
                "runs": [{"acc": v, "auc": v, "seconds": 1.0}], "collapsed": False}

    previous = {"command": "old", "ours": {"Ensemble of the CNNs": row(0.75), "AlexNet": row(0.6),
                                           "Classical (best of 5)": row(0.5)}}
    merged = accuracy._merge_rows(previous, {"AlexNet": {**row(0.9), "command": "new"}})
    assert list(merged) == ["Classical (best of 5)", "AlexNet", "Ensemble of the CNNs"]
    assert merged["AlexNet"]["acc_mean"] == 0.9 and merged["AlexNet"]["command"] == "new"
    assert merged["Classical (best of 5)"]["command"] == "old"
    assert accuracy._merge_rows(None, {"AlexNet": row(0.9)}) == {"AlexNet": row(0.9)}
    # --extend keeps a row's other seeds: a run's seed is recorded, or named by its folder in older rows
    assert accuracy._seed({"run": "/w/adrenalmnist3d-vgg11_bn_acs-s1", "acc": 0.8}) == 1
    assert accuracy._seed({"run": "/w/x-s1", "seed": 2}) == 2
    # a finished run scored again (--reuse --extend) keeps the wall time of the invocation that trained it
    kept = [{"run": "/w/x-s1", "seed": 1, "seconds": 300.0}, {"run": "/w/x-s2", "seed": 2, "seconds": 5.0,
                                                              "reused": "finished"}]
    again = {"run": "/w/x-s1", "seed": 1, "seconds": 250.0, "reused": "finished"}
    assert accuracy._kept_time(again, kept)["seconds"] == 300.0
    assert accuracy._kept_time({**again, "reused": "interrupted"}, kept)["seconds"] == 250.0
    assert accuracy._kept_time({**again, "run": "/w/y-s1"}, kept)["seconds"] == 250.0
    assert accuracy._kept_time({**again, "run": "/w/x-s2", "seed": 2}, kept)["seconds"] == 5.0
    # an older file named the classical row by its features: a new classical row replaces it
    legacy = {"command": "old", "ours": {"Classical (best of 5, HOG+stats)": row(0.5), "AlexNet": row(0.6)}}
    assert list(accuracy._merge_rows(legacy, {"Classical (best of 5)": row(0.8)})) == ["Classical (best of 5)",
                                                                                     "AlexNet"]

    res = {"machine": {"cpu": "x", "cores": 2, "gpu": None, "python": "3", "torch": "2"}, "command": "new",
           "datasets": {"breastmnist": {"majority_rate": 0.731, "ours": merged, "published": [], "command": "new"}}}
    monkeypatch.setattr(report, "_load", lambda name: res)
    block = report.accuracy_block()
    assert "[1] `old`; [2] `new`" in block
    assert "| **medcls: AlexNet** [2] | 0.900 |" in block and "| **medcls: Ensemble of the CNNs** [1] | 0.750 |" in block
    # under the majority rate (0.731) is a failure, and the table says so
    assert "| **medcls: Classical (best of 5)** [1] ⚠ ACC below the majority class's | 0.500 |" in block
    # an ensemble of families names them
    fam = row(0.8)
    fam["runs"][0]["families"] = ["AlexNet", "VGG-11 (BN)"]
    res["datasets"]["breastmnist"]["ours"] = {"Ensemble of the CNNs": {**fam, "command": "new"}}
    assert "| **medcls: Ensemble of the CNNs (AlexNet + VGG-11 (BN))** | 0.800 |" in report.accuracy_block()


def test_gpu_speed_bench_says_plainly_when_there_is_no_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the --gpu bench runs for real here")
    env = {**os.environ, "MEDCLS_BENCH_RESULTS": str(tmp_path)}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--gpu"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "needs CUDA" in r.stderr
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_quick_sweep_runs_each_variant_and_seed(tmp_path, medmnist_dir):
    out = tmp_path / "sweep.json"
    env = {**os.environ, "TQDM_DISABLE": "1", "MEDCLS_DEVICE": "cpu"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "sweep.py"), "--quick", "--dataset", "breastmnist",
                        "--data-dir", str(medmnist_dir), "--models", "alexnet", "--variants", "base", "plain_ema",
                        "--seeds", "0", "--workers", "2", "--tta", "--out", str(tmp_path / "runs"), "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["command"].startswith("python bench/sweep.py") and res["machine"]["cores"] >= 1
    assert sorted(x["variant"] for x in res["rows"]) == ["base", "plain_ema"]
    for x in res["rows"]:
        assert 0 <= x["test_auc"] <= 1 and x["epochs_run"] == 1
        assert 0 <= x["test_auc_flip_tta"] <= 1 and 0 <= x["test_acc_flip_tta"] <= 1
    table = r.stdout.split("variant")[-1]
    assert "plain_ema" in table and "+ flip TTA" in table  # the summary table
    bad = subprocess.run([sys.executable, str(REPO / "bench" / "sweep.py"), "--variants", "nope"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown variants" in bad.stderr
    # two sweeps run apart (one variant each) tabled together, the reference named by --variants
    parts = []
    for v in ("plain_ema", "base"):
        parts.append(tmp_path / f"{v}.json")
        parts[-1].write_text(json.dumps({**res, "rows": [x for x in res["rows"] if x["variant"] == v]}))
    both = tmp_path / "both.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "sweep.py"), "--combine", *map(str, parts),
                        "--variants", "base", "--json", str(both)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    comb = json.loads(both.read_text())
    assert len(comb["rows"]) == 2 and comb["commands"][-1].startswith("python bench/sweep.py --combine")
    assert [x["variant"] for x in comb["summary"]] == ["base", "plain_ema"]
    ref, other = ({x["variant"]: x for x in res["rows"]}[v]["val_auc"] for v in ("base", "plain_ema"))
    assert comb["summary"][1]["gain_mean"] == pytest.approx(other - ref)


def test_reuse_scores_a_finished_run_again_and_resumes_an_interrupted_one(tmp_path, medmnist_dir, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import accuracy

    from medcls.train import engine

    first = accuracy.run_cnn("alexnet", "breastmnist", 1, True, tmp_path, str(medmnist_dir))
    assert "reused" not in first
    fits = []
    real_fit = engine.fit
    monkeypatch.setattr(engine, "fit", lambda cfg, resume=False, **kw: fits.append(resume) or real_fit(cfg, resume))
    again = accuracy.run_cnn("alexnet", "breastmnist", 1, True, tmp_path, str(medmnist_dir), reuse=True)
    assert fits == [] and again["reused"] == "finished" and again["auc"] == first["auc"]
    run = Path(first["run"])
    (run / "metrics.json").unlink()  # stopped after its last checkpoint, before it was scored
    resumed = accuracy.run_cnn("alexnet", "breastmnist", 1, True, tmp_path, str(medmnist_dir), reuse=True)
    assert fits == [True] and resumed["reused"] == "interrupted" and resumed["auc"] == first["auc"]
    assert accuracy._kept_run(tmp_path / "nothing", "alexnet", "breastmnist", 1, True) is None
    assert accuracy._kept_run(run, "alexnet", "breastmnist", 2, True) is None, "another seed's folder is not reused"
    assert accuracy._kept_run(run, "alexnet", "breastmnist", 1, False) is None, "nor a quick run for a full one"


def test_seeds_averages_a_models_seeds_and_records_its_validation_auc_beside_theirs(tmp_path, medmnist_dir, monkeypatch):
    sys.path.insert(0, str(REPO / "bench"))
    import _common
    import accuracy

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    monkeypatch.setattr(accuracy, "RESULTS", tmp_path)
    work = tmp_path / "work"
    assert accuracy.main(["--quick", "--datasets", "breastmnist", "--methods", "alexnet", "seeds", "--seeds", "0", "1",
                          "--data-dir", str(medmnist_dir), "--work", str(work)]) == 0
    ours = json.loads((tmp_path / "accuracy_quick.json").read_text())["datasets"]["breastmnist"]["ours"]
    single, ens = ours["AlexNet"]["runs"], ours["Ensemble of 2 AlexNet seeds"]["runs"][0]
    assert ens["members"] == [r["run"] for r in single] and ens["seeds"] == [0, 1]
    assert ens["seconds"] >= sum(r["seconds"] for r in single)
    # judged on validation by weights that never trained on it (a refit run's first pass; these did not refit)
    assert json.loads(Path(ens["run"], "metrics.json").read_text())["val"]["auc"] == ens["val_auc"]
    for r in single:
        assert accuracy._first_pass(r["run"]).root == Path(r["run"])
        first = json.loads((accuracy._first_pass(r["run"]).root / "metrics.json").read_text())
        assert r["val_auc"] == first["val"]["auc"]
    assert ens["members_val_auc_mean"] == pytest.approx(np.mean([r["val_auc"] for r in single]))
    assert ens["members_val_auc_below"] == sum(r["val_auc"] < ens["val_auc"] for r in single)
    assert 0 <= ens["val_auc"] <= 1 and 0 <= ens["auc"] <= 1
