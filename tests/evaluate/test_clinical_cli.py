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
                   "--model-arg", "fc_width=32", "--epochs", "1", "--max-train-samples", "300", "--seed", str(seed),
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
    assert "X-ray: ionising radiation" in (run / "model_card.md").read_text()  # PneumoniaMNIST: chest X-ray
    assert (run / "decision_curve.png").is_file()


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
    # the text form of the same comparison (not computed twice)
    import medcls.runs

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(medcls.runs, "compare_runs", lambda *a, **k: c)
        rc, out, _ = run_cli(["compare", *two_runs], capsys)
    assert rc == 0 and f"p = {c['delong']['p']:.4g}" in out and "McNemar" in out


def test_operating_points_are_refused_where_they_mean_nothing(two_runs, capsys):
    rc, _, err = run_cli(["evaluate", two_runs[1], "--operating-point", "ppv=0.9"], capsys)
    assert rc == 2 and "sens=X" in err
    rc, _, err = run_cli(["evaluate", two_runs[1], "--prevalence", "0.1"], capsys)
    assert rc == 2 and "no operating point yet" in err
    assert np.isfinite(json.loads((two_runs[1] / "metrics.json").read_text())["test"]["auc"])


@pytest.fixture(scope="module")
def patient_manifest(medmnist_dir, tmp_path_factory):
    """Real chest X-rays (PneumoniaMNIST) as PNG files, two images of the same class per patient, a sex column."""
    from medcls.data import load_dataset

    ds = load_dataset("pneumoniamnist", data_dir=str(medmnist_dir))
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(0)
    lines = ["path,label,split,patient_id,sex"]
    for split, n in (("train", 160), ("val", 40), ("test", 80)):
        x, y = ds.split(split)
        for c in (0, 1):
            idx = np.flatnonzero(y == c)[: n // 2]
            for j in range(0, len(idx) - 1, 2):
                pid, sex = f"{split}-{c}-{j}", "FM"[int(rng.integers(0, 2))]
                for i in idx[j:j + 2]:
                    f = root / f"{split}_{i}.png"
                    Image.fromarray(x[i, 0] if x.ndim == 4 else x[i]).save(f)
                    lines.append(f"{f.name},{ds.class_names[c]},{split},{pid},{sex}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_patient_level_and_subgroup_results_from_a_manifest(patient_manifest, tmp_path, capsys):
    from sklearn.metrics import roc_auc_score

    from medcls.runs import load_run

    run = tmp_path / "r"
    rc, _, err = run_cli(["train", "--data", patient_manifest, "--model", "vgg11", "--model-arg", "fc_width=32",
                          "--size", "28", "--epochs", "2", "--out", run], capsys)
    assert rc == 0, err
    rc, out, err = run_cli(["evaluate", run, "--by", "sex", "--aggregate", "max"], capsys)
    assert rc == 0, err
    m = json.loads((run / "metrics.json").read_text())["test"]
    r = load_run(run, "cpu")
    ds = r.load_dataset()
    p, y = r.sample_probs(ds, "test")
    pids, sex = ds.patient_ids[ds.splits == "test"], ds.columns["sex"][ds.splits == "test"]
    # per patient, by the rule asked for: the larger of each patient's two probabilities
    ids = list(dict.fromkeys(pids))
    pp = np.array([p[pids == i, 1].max() for i in ids])
    yp = np.array([y[pids == i].max() for i in ids])
    g = m["patient_level"]
    assert (g["groups"], g["images"], g["rule"], g["column"]) == (len(ids), len(y), "max", "patient_id")
    assert g["groups"] * 2 == g["images"]
    assert g["auc"] == pytest.approx(roc_auc_score(yp, pp))
    assert "per patient_id" in out
    # per subgroup: the metrics of that subgroup's images alone, and the gap between them
    sub = m["subgroups"]["sex"]
    for v in ("F", "M"):
        mask = sex == v
        assert sub["values"][v]["n"] == int(mask.sum())
        assert sub["values"][v]["auc"] == pytest.approx(roc_auc_score(y[mask], p[mask, 1]))
    gap = abs(sub["values"]["F"]["auc"] - sub["values"]["M"]["auc"])
    assert sub["largest_auc_gap"]["gap"] == pytest.approx(gap)
    assert "sex=F" in out and "largest AUC gap by sex" in out
    # the model card says the same, with the modality's limits and what only the authors can add
    card = (run / "model_card.md").read_text()
    assert "## Intended use" in card and "per patient_id" in card and "by sex" in card
    assert "Not stated by the run" in card and f"{g['auc']:.3f}" in card
    assert "Model card" in (run / "report.html").read_text()
    rc, _, err = run_cli(["evaluate", run, "--by", "site"], capsys)
    assert rc == 2 and "no column 'site'" in err and "sex" in err


def test_dicom_images_group_by_study_without_the_uid_leaving_the_file():
    import hashlib

    import pydicom

    from medcls.evaluate.clinical import aggregate_groups
    from medcls.io import read
    from tests.conftest import dcm

    path = dcm("CT_small.dcm")
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    _, meta = read(path)
    assert meta.extra["study_key"] == hashlib.sha256(uid.encode()).hexdigest()[:16]
    assert uid not in json.dumps(meta.to_dict(), default=str)
    # the rules: mean, max and noisy-or of the positive class per group, groups in order of appearance
    p = np.array([[0.8, 0.2], [0.4, 0.6], [0.9, 0.1]])
    y = np.array([0, 1, 0])
    for rule, want in (("mean", 0.4), ("max", 0.6), ("noisy-or", 1 - 0.8 * 0.4)):
        q, yy, ids = aggregate_groups(p, y, np.array(["s1", "s1", "s2"]), rule, "binary")
        assert list(ids) == ["s1", "s2"] and list(yy) == [1, 0]
        assert q[0, 1] == pytest.approx(want) and q[0].sum() == pytest.approx(1)
