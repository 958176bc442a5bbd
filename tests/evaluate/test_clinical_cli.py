"""Clinical evaluation from the command line: operating points chosen on validation, paired comparisons."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def two_runs(medmnist_dir, tmp_path_factory):
    from medcls.cli import main

    root = tmp_path_factory.mktemp("runs")
    out = []
    for name, seed in (("a", 0), ("b", 1)):
        rc = main(["train", "--data", "pneumoniamnist", "--data-dir", str(medmnist_dir), "--model", "vgg11",
                   "--model-arg", "fc_width=32", "--epochs", "2", "--max-train-samples", "400", "--seed", str(seed),
                   "--out", str(root / name)])
        assert rc == 0
        out.append(root / name)
    return out


def test_the_operating_point_chosen_on_validation_is_the_one_applied_to_test_and_predict(two_runs, tmp_path,
                                                                                          capsys):
    from medcls.evaluate.stats import at_threshold, choose_threshold
    from medcls.runs import load_run

    run = two_runs[0]
    rc, out, err = run_cli(["evaluate", run, "--operating-point", "sens=0.9", "--prevalence", "0.1"], capsys)
    assert rc == 0, err
    t = json.loads((run / "config.json").read_text())["operating_point"]["threshold"]
    r = load_run(run, "cpu")
    ds = r.load_dataset()
    pv, yv = r.sample_probs(ds, "val")
    assert t == pytest.approx(choose_threshold(yv, pv[:, 1], "sens=0.9"))
    pt, yt = r.sample_probs(ds, "test")
    m = json.loads((run / "metrics.json").read_text())["test"]["operating_point"]
    ref = at_threshold(yt, pt[:, 1], t, 0.1)
    assert m["threshold"] == t and m["sensitivity"] == pytest.approx(ref["sensitivity"])
    assert m["at_prevalence"]["ppv"] == pytest.approx(ref["at_prevalence"]["ppv"])
    assert "chosen on validation" in out
    # predict decides at that threshold: the positive class whenever its probability reaches it
    x, _ = ds.split("test")
    for i in range(12):
        Image.fromarray(x[i] if x.ndim == 3 else x[i, 0]).save(tmp_path / f"{i}.png")
    rc, out, _ = run_cli(["predict", run, tmp_path, "--json"], capsys)
    recs = json.loads(out)
    assert len(recs) == 12
    for rec in recs:
        assert rec["threshold"] == t
        assert rec["class"] == ("pneumonia" if rec["probabilities"]["pneumonia"] >= t else "normal")
    report = (run / "report.html").read_text()
    assert "Operating point" in report and "Decision curve" in report


def test_compare_two_runs_on_the_same_test_cases(two_runs, capsys):
    from medcls.evaluate.stats import delong_test
    from medcls.runs import load_run

    rc, out, err = run_cli(["compare", *two_runs, "--json"], capsys)
    assert rc == 0, err
    c = json.loads(out)
    assert c["n"] == 624
    pa, y = load_run(two_runs[0], "cpu").sample_probs(load_run(two_runs[0], "cpu").load_dataset(), "test")
    pb, _ = load_run(two_runs[1], "cpu").sample_probs(load_run(two_runs[1], "cpu").load_dataset(), "test")
    d = delong_test(y, pa[:, 1], pb[:, 1])
    assert c["delong"]["p"] == pytest.approx(d["p"]) and c["delong"]["diff"] == pytest.approx(d["diff"])
    m = c["mcnemar"]
    assert m["a_right_b_wrong"] == int(((pa.argmax(1) == y) & (pb.argmax(1) != y)).sum())
    lo, hi = c["auc_bootstrap"]["ci95"]
    assert lo <= c["auc_bootstrap"]["diff"] <= hi
    rc, out, _ = run_cli(["compare", *two_runs], capsys)
    assert rc == 0 and "DeLong" in out and "McNemar" in out


def test_operating_points_are_refused_where_they_mean_nothing(two_runs, capsys):
    rc, _, err = run_cli(["evaluate", two_runs[1], "--operating-point", "ppv=0.9"], capsys)
    assert rc == 2 and "sens=X" in err
    rc, _, err = run_cli(["evaluate", two_runs[1], "--prevalence", "0.1"], capsys)
    assert rc == 2 and "no operating point yet" in err
    assert np.isfinite(json.loads((two_runs[1] / "metrics.json").read_text())["test"]["auc"])
