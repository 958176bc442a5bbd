import json

import numpy as np
import pytest
import torch

from medcls.train.checkpoint import load_state
from medcls.train.semi import pseudo_labels
from medcls.train.ssl import nt_xent
from tests.conftest import run_cli

# AlexNet's convolutions with a 64-wide head (the paper's 4096-wide FC layers: 96 % of its weights)
TINY = ["--model", "alexnet_onetower", "--model-arg", "fc_width=64", "--batch-size", "32", "--max-train-samples",
        "320", "--init", "kaiming"]


@pytest.mark.parametrize("method", ["pseudo", "fixmatch", "meanteacher"])
def test_semi_supervised_runs_and_reports(method, medmnist_dir, tmp_path, capsys):
    run = tmp_path / method
    rc, out, err = run_cli(["train", "--data", "pneumoniamnist", "--data-dir", medmnist_dir, "--out", run,
                            "--labelled-fraction", "0.1", "--semi", method, "--epochs", "2", *TINY], capsys)
    assert rc == 0, err
    assert f"({method})" in out and "test: ACC" in out
    meta = json.loads((run / "config.json").read_text())
    assert meta["train"]["semi"] == method
    lab, unl = meta["data"]["n_train_labelled"], meta["data"]["n_train_unlabelled"]
    assert lab + unl == 320 and lab == pytest.approx(32, abs=2)  # 10 % per class, rounded
    m = json.loads((run / "metrics.json").read_text())
    assert 0 <= m["test"]["auc"] <= 1
    # an epoch is one pass over the labelled items for every method: the LR schedule runs its full course
    steps = meta["schedule"]["epochs"] * -(-lab // meta["schedule"]["batch_size"])
    assert load_state(run / "state.pt")["scheduler"]["last_epoch"] == steps
    if method == "pseudo":
        assert "n_pseudo" in (run / "history.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("decay, init_share", [(0.99, 1 / 6), (0.5, 1 / 32)])
def test_mean_teacher_forgets_its_random_start(decay, init_share):
    from torch import nn

    from medcls.train.semi import teacher_update as _ema

    teacher, student = (nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for _ in range(2))
    student[1].running_mean.fill_(0.7)
    t0 = teacher[0].weight.detach().clone()
    for step in range(1, 6):  # min(step / (step + 1), decay): at 0.99, 1/2 ... 5/6 leave 1/6 of the start
        _ema(teacher, student, step, decay)
    expect = init_share * t0 + (1 - init_share) * student[0].weight.detach()
    torch.testing.assert_close(teacher[0].weight, expect)
    assert torch.equal(teacher[1].running_mean, student[1].running_mean)


def test_pseudo_labels_keep_the_labelled_class_ratio():
    rng = np.random.default_rng(0)
    # an early model sure of the majority class for 300 items, of the minority class for 20
    probs = np.concatenate([np.stack([1 - (p := rng.uniform(0.96, 1, 300)), p], 1),
                            np.stack([q := rng.uniform(0.96, 1, 20), 1 - q], 1),
                            np.full((50, 2), 0.5)])
    pick, lab = pseudo_labels(probs, np.array([0.25, 0.75]))
    assert np.bincount(lab, minlength=2).tolist() == [20, 60]  # 20 minority bound the total at 80
    ones = pick[lab == 1]
    assert probs[ones, 1].min() >= np.sort(probs[:300, 1])[-60]  # the most confident of the majority
    assert not np.isin(np.arange(320, 370), pick).any()  # unsure items never
    pick, lab = pseudo_labels(probs[:300], np.array([0.25, 0.75]))
    assert len(pick) == 0  # never confident of the minority class: no pseudo-labels yet


def test_labelled_fraction_without_semi_uses_only_labelled(medmnist_dir, tmp_path, capsys):
    run = tmp_path / "sup"
    rc, out, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run,
                            "--labelled-fraction", "0.05", "--epochs", "1", *TINY], capsys)
    assert rc == 0, err
    meta = json.loads((run / "config.json").read_text())
    assert meta["data"]["n_train_unlabelled"] == 0 and meta["data"]["n_train_labelled"] < 30


def test_nt_xent_prefers_matching_pairs():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16)) < nt_xent(z, torch.randn(8, 16))


@pytest.mark.parametrize("features", ["hog", "ssl"])
def test_cluster_reports_scores(features, medmnist_dir, tmp_path, capsys):
    out = tmp_path / features
    rc, text, err = run_cli(["cluster", "--data", "breastmnist", "--data-dir", medmnist_dir, "--features", features,
                             "--out", out, "--max-samples", "200", "--ssl-epochs", "1", "--method",
                             "gmm" if features == "ssl" else "kmeans"], capsys)
    assert rc == 0, err
    r = json.loads((out / "cluster.json").read_text())
    assert r["n"] == 200 and r["k"] == 2 and sum(r["cluster_sizes"]) == 200
    assert 0 <= r["nmi"] <= 1 and -1 <= r["ari"] <= 1 and 0.5 <= r["purity"] <= 1
    assert (out / "embedding_clusters.png").stat().st_size > 1000 and (out / "embedding_labels.png").is_file()
    lines = (out / "assignments.csv").read_text().strip().splitlines()
    assert len(lines) == 201
    pr = r["probe"]  # fitted on the 200 clustered training images, scored on the whole test split
    assert pr["n_train"] == 200 and pr["n_test"] == 156 and 0 <= pr["acc"] <= 1 and 0 <= pr["auc"] <= 1
    assert f"linear probe (200 train -> 156 test): ACC {pr['acc']:.3f}" in text


def test_linear_probe_scores_what_the_features_carry():
    from medcls.cluster import linear_probe

    rng = np.random.default_rng(0)
    y, yt = rng.integers(0, 3, 300), rng.integers(0, 3, 200)
    informative = linear_probe(np.eye(3)[y] + rng.normal(0, 0.3, (300, 3)), y,
                               np.eye(3)[yt] + rng.normal(0, 0.3, (200, 3)), yt, "multiclass")
    noise = linear_probe(rng.normal(size=(300, 3)), y, rng.normal(size=(200, 3)), yt, "multiclass")
    assert informative["auc"] > 0.95 and informative["acc"] > 0.85
    assert noise["auc"] < 0.65 and noise["acc"] < 0.5
    assert informative["n_train"] == 300 and informative["n_test"] == 200


def test_purity_definition():
    from medcls.cluster import purity

    y = np.array([0, 0, 1, 1, 1, 0])
    c = np.array([1, 1, 0, 0, 1, 1])  # cluster 1: labels 0,0,1,0 -> 3; cluster 0: 1,1 -> 2
    assert purity(y, c) == pytest.approx(5 / 6)


def test_cluster_on_trained_cnn_and_ensemble(medmnist_dir, tmp_path, capsys):
    runs = []
    for i, model in enumerate(["alexnet_onetower", "alexnet"]):
        run = tmp_path / f"r{i}"
        rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run,
                              "--model", model, "--model-arg", "fc_width=64", "--epochs", "1", "--batch-size", "32",
                              "--max-train-samples", "96", "--init", "kaiming", "--seed", str(i)], capsys)
        assert rc == 0, err
        runs.append(run)
    rc, _, err = run_cli(["cluster", "--data", "breastmnist", "--features", f"cnn:{runs[0]}", "--out",
                          tmp_path / "c", "--max-samples", "120"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "c" / "cluster.json").read_text())["feature_dim"] == 64  # the head's width
    rc, _, err = run_cli(["cluster", "--data", "breastmnist", "--features", f"cnn:{runs[0]}", "--out",
                          tmp_path / "c2", "--max-samples", "120", "--no-probe"], capsys)
    assert rc == 0 and "probe" not in json.loads((tmp_path / "c2" / "cluster.json").read_text())
    rc, out, err = run_cli(["ensemble", *runs, "--out", tmp_path / "ens"], capsys)
    assert rc == 0, err
    assert "test: ACC" in out
    from medcls.data import load_dataset
    from medcls.runs import load_run

    ds = load_dataset(medmnist_dir / "breastmnist.npz")
    members = [load_run(r).sample_probs(ds, "test")[0] for r in runs]
    ens, y = load_run(tmp_path / "ens").sample_probs(ds, "test")
    np.testing.assert_allclose(ens, np.mean(members, 0), atol=1e-6)
    m = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    from sklearn.metrics import roc_auc_score

    assert m["test"]["auc"] == pytest.approx(roc_auc_score(y, ens[:, 1]))
    assert (tmp_path / "ens" / "report.html").is_file()
    rc, _, err = run_cli(["ensemble", runs[0], "--out", tmp_path / "bad"], capsys)
    assert rc == 2 and "at least two" in err


@pytest.mark.parametrize("args,says", [
    (["--k", "0"], "--k must be from 2"),
    (["--k", "1000", "--max-samples", "50"], "number of samples clustered (50), got 1000"),
    (["--split", "nope"], "no 'nope' split to cluster (it has test, train, val)"),
    (["--max-samples", "-1"], "--max-samples must be 0"),
])
def test_cluster_refuses_impossible_requests_before_any_work(args, says, medmnist_dir, tmp_path, capsys):
    rc, _, err = run_cli(["cluster", "--data", "breastmnist", "--data-dir", medmnist_dir, "--features", "ssl",
                          "--out", tmp_path / "c", *args], capsys)
    assert rc == 2 and says in err and "internal error" not in err
    assert not (tmp_path / "c").exists()
