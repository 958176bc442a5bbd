"""Train -> evaluate -> predict through the CLI, on small real subsets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import dcm, run_cli

# AlexNet's convolutions with a 64-wide head: the paper's 4096-wide FC layers are 96 % of its weights, and
# would make every checkpoint of these runs 450 MB (what is tested here does not depend on the head's width)
SMALL_HEAD = ["--model-arg", "fc_width=64"]
SMALL_KW = {"fc_width": 64}
FAST = ["--model", "alexnet_onetower", *SMALL_HEAD, "--epochs", "1", "--batch-size", "32", "--max-train-samples",
        "96", "--init", "kaiming"]
RUN_FILES = ["config.json", "best.safetensors", "last.safetensors", "state.pt", "history.csv", "metrics.json",
             "roc.png", "confusion.png", "calibration.png", "curves.png", "report.html"]
METRIC_KEYS = {"acc", "auc", "auc_ci95", "sensitivity", "specificity", "f1", "confusion", "n", "brier", "ece"}


def _check_run(run: Path, n_test: int | None = None, first_pass: bool = False):
    resumable = ("state.pt", "last.safetensors")  # a refit run's finished first pass no longer keeps these
    for f in RUN_FILES:
        assert (run / f).is_file() != (first_pass and f in resumable), f
    m = json.loads((run / "metrics.json").read_text())
    refit = json.loads((run / "config.json").read_text()).get("refit")
    if refit:  # trained again on train + val (--refit): val metrics belong to the first pass
        first = _check_run(run / refit["selection"], n_test, first_pass=True)
        assert "val" not in m and 1 <= refit["epoch"] <= refit["of_epochs"]
        assert refit["n_val"] == first["val"]["n"]
        m = {**m, "val": first["val"]}
    assert METRIC_KEYS <= set(m["test"]) and METRIC_KEYS <= set(m["val"])
    assert 0 <= m["test"]["acc"] <= 1 and 0 <= m["test"]["auc"] <= 1
    if n_test is not None:
        assert m["test"]["n"] == n_test
    if not first_pass:
        state = torch.load(run / "state.pt", weights_only=True)  # no pickle code needed to read it
        assert int(state["epoch"]) >= 1 and "rng" in state
    assert not list(run.glob(".*.tmp"))
    html = (run / "report.html").read_text()
    assert "data:image/png;base64" in html and "AUC" in html
    return m


@pytest.mark.parametrize("name,n_test,extra", [
    ("pneumoniamnist", 624, []),
    ("breastmnist", 156, []),
    ("adrenalmnist3d", 298, ["--volume-mode", "2.5d"]),
])
def test_medmnist_round_trip(name, n_test, extra, medmnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", name, "--data-dir", medmnist_dir, "--out", run, *FAST, *extra], capsys)
    assert rc == 0, err
    assert "test: ACC" in out and "report.html" in out
    m = _check_run(run, n_test)
    rc, out, _ = run_cli(["evaluate", run, "--split", "test"], capsys)
    assert rc == 0 and json.loads((run / "metrics.json").read_text())["test"]["auc"] == pytest.approx(m["test"]["auc"])
    other = "breastmnist" if name == "pneumoniamnist" else "pneumoniamnist"  # other classes: refused, metrics kept
    before = (run / "metrics.json").read_text()
    rc, _, err = run_cli(["evaluate", run, "--data", medmnist_dir / f"{other}.npz"], capsys)
    assert rc == 2 and f"{other}.npz: its classes" in err and (run / "metrics.json").read_text() == before
    # predict on real files of the modality
    z = np.load(medmnist_dir / f"{name}.npz")
    if name.endswith("3d"):
        import nibabel as nib

        nib.save(nib.Nifti1Image(z["test_images"][0].astype(np.float32).T, np.eye(4)), tmp_path / "vol.nii.gz")
        files = [tmp_path / "vol.nii.gz", dcm("CT_small.dcm")]
    else:
        Image.fromarray(z["test_images"][0]).save(tmp_path / "a.png")
        real = {"pneumoniamnist": "RG1_UNCI.dcm", "breastmnist": "US1_UNCR.dcm"}[name]  # CR chest, ultrasound
        files = [tmp_path / "a.png", dcm(real)]
    (tmp_path / "bad.dcm").write_bytes(b"DICM but not really")
    rc, out, err = run_cli(["predict", run, *files, tmp_path / "bad.dcm", "--json"], capsys)
    recs = json.loads(out)
    assert rc == 2 and "bad.dcm" in err and len(recs) == 3
    assert recs[2]["path"] == str(tmp_path / "bad.dcm") and "unsupported file type" in recs[2]["error"]
    recs = recs[:2]  # a failure is a record too, after the predictions
    names = json.loads((run / "config.json").read_text())["data"]["class_names"]
    for r in recs:
        assert r["class"] in names and sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    if name.endswith("3d"):
        assert recs[0]["items"] == 28 and len(recs[0]["per_item"]) == 28


def test_predict_png_equals_training_input(medmnist_dir, tmp_path, capsys):
    """A MedMNIST test image saved as PNG gets the probabilities the test split got."""
    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run, *FAST], capsys)
    assert rc == 0, err
    from medcls.data import load_dataset
    from medcls.runs import load_run

    r = load_run(run)
    ds = load_dataset(medmnist_dir / "breastmnist.npz")
    probs, _ = r.sample_probs(ds, "test")
    x, _ = ds.split("test")
    Image.fromarray(x[3, 0]).save(tmp_path / "t3.png")
    pred = r.predict_files([tmp_path / "t3.png"])[0]
    np.testing.assert_allclose(pred.probs, probs[3], atol=1e-5)
    # --data-dir points evaluate at another copy of the set (here: one with a 40-image test split).
    z = dict(np.load(medmnist_dir / "breastmnist.npz"))
    z["test_images"], z["test_labels"] = z["test_images"][:40], z["test_labels"][:40]
    (tmp_path / "alt").mkdir()
    np.savez(tmp_path / "alt" / "breastmnist.npz", **z)
    rc, _, err = run_cli(["evaluate", run, "--data", "breastmnist", "--data-dir", tmp_path / "alt"], capsys)
    assert rc == 0, err
    assert json.loads((run / "metrics.json").read_text())["test"]["n"] == 40
    # The same command again does not replace the finished run; --overwrite does.
    weights = (run / "best.safetensors").read_bytes()
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run, *FAST,
                          "--seed", "1"], capsys)
    assert rc == 2 and f"{run} already holds a run; pass --overwrite" in err and "--resume" in err
    assert (run / "best.safetensors").read_bytes() == weights
    rc, _, err = run_cli(["ensemble", run, run, "--out", run], capsys)
    assert rc == 2 and "already holds a run" in err
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run, *FAST,
                          "--seed", "1", "--overwrite"], capsys)
    assert rc == 0, err
    assert (run / "best.safetensors").read_bytes() != weights


def test_flip_tta_gives_mirror_images_one_prediction(medmnist_dir, tmp_path, capsys):
    """With --tta flip an image and its mirror image get the same prediction; without, they do not."""
    from medcls.runs import load_run

    x = np.load(medmnist_dir / "breastmnist.npz")["test_images"][:4]
    for i, img in enumerate(x):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        Image.fromarray(np.ascontiguousarray(img[:, ::-1])).save(tmp_path / f"{i}m.png")
    files = [tmp_path / f"{i}{m}.png" for i in range(len(x)) for m in ("", "m")]
    gaps = {}
    for tta in ("flip", "none"):
        run = tmp_path / tta
        rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run, *FAST,
                              "--tta", tta, "--no-ema"], capsys)
        assert rc == 0, err
        assert json.loads((run / "config.json").read_text())["preprocess"]["tta"] == tta
        logp = np.log(np.stack([r.probs for r in load_run(run).predict_files(files)]).clip(1e-30))
        gaps[tta] = np.abs(logp[0::2] - logp[1::2]).max()  # log: a one-epoch model's probabilities saturate
    assert gaps["flip"] < 1e-4 and gaps["none"] > 1e-2


def _real_pngs(medmnist_dir, root: Path, n=20):
    z = np.load(medmnist_dir / "pneumoniamnist.npz")
    x, y = z["train_images"], z["train_labels"].ravel()
    out = []
    for cls, name in [(0, "normal"), (1, "pneumonia")]:
        for i in np.flatnonzero(y == cls)[:n]:
            p = root / name / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(p)
            out.append((p, name))
    return out


def test_folder_and_csv_datasets(medmnist_dir, tmp_path, capsys):
    files = _real_pngs(medmnist_dir, tmp_path / "folder")
    rc, _, err = run_cli(["train", "--data", tmp_path / "folder", "--size", "32", "--out", tmp_path / "r1", *FAST], capsys)
    assert rc == 0, err
    _check_run(tmp_path / "r1")
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(f"{p},{n}" for p, n in files))
    rc, _, err = run_cli(["train", "--data", tmp_path / "m.csv", "--size", "32", "--out", tmp_path / "r2", *FAST], capsys)
    assert rc == 0, err
    m = _check_run(tmp_path / "r2")
    cfg = json.loads((tmp_path / "r2" / "config.json").read_text())
    n_train = cfg["refit"]["n_train"] if "refit" in cfg else cfg["data"]["n_train_labelled"]
    assert n_train + m["val"]["n"] + m["test"]["n"] == len(files)  # every file in exactly one split
    rc, out, _ = run_cli(["predict", tmp_path / "r2", tmp_path / "folder" / "normal", "--json"], capsys)
    assert rc == 0 and len(json.loads(out)) == 20


def test_multilabel_csv(medmnist_dir, tmp_path, capsys):
    files = _real_pngs(medmnist_dir, tmp_path / "imgs")
    rows = [f"{p},{'opacity|effusion' if k % 3 == 0 else ('opacity' if n == 'pneumonia' else 'effusion')}"
            for k, (p, n) in enumerate(files)]
    (tmp_path / "ml.csv").write_text("path,label\n" + "\n".join(rows))
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", tmp_path / "ml.csv", "--size", "28", "--out", run, *FAST], capsys)
    assert rc == 0, err
    m = _check_run(run)
    assert set(m["test"]["per_class"]) == {"effusion", "opacity"} and "auc" in m["test"]["per_class"]["opacity"]
    rc, out, _ = run_cli(["predict", run, files[0][0], "--json"], capsys)
    rec = json.loads(out)[0]
    assert isinstance(rec["class"], list) and set(rec["probabilities"]) == {"effusion", "opacity"}


def _train_cmd(out: Path, medmnist_dir: Path, epochs: int) -> list[str]:
    # one pass (--no-refit): the refit's two are tested in test_refit_trains_again_on_train_and_val
    return [sys.executable, "-m", "medcls.cli", "train", "--data", "pneumoniamnist", "--data-dir", str(medmnist_dir),
            "--out", str(out), "--model", "alexnet_onetower", *SMALL_HEAD, "--epochs", str(epochs),
            "--batch-size", "32", "--max-train-samples", "256", "--init", "kaiming", "--seed", "3", "--device", "cpu",
            "--checkpoint-every", "0", "--no-refit"]


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted(medmnist_dir, tmp_path):
    from safetensors.torch import load_file

    from tests.conftest import medmnist_subset

    env = {**os.environ, "TQDM_DISABLE": "1"}
    data = tmp_path / "data"  # the training split whole; each run validates and is scored on 64 + 64 images
    data.mkdir()
    medmnist_subset(medmnist_dir, "pneumoniamnist", data, {"train": None, "val": 64, "test": 64})
    full = tmp_path / "full"
    subprocess.run(_train_cmd(full, data, 2), check=True, env=env, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, data, 2), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    # wait for the epoch-1 checkpoint however loaded the machine is; never on a wall-clock guess
    h = killed / "history.csv"
    deadline = time.time() + 1200
    while not (h.is_file() and len(h.read_text().strip().splitlines()) >= 2):
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before epoch 1 was checkpointed:\n"
                        f"{proc.stdout.read().decode(errors='replace')[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("epoch 1 was not checkpointed within 20 minutes")
        time.sleep(0.05)
    time.sleep(0.3)  # inside epoch 2 (256 images take seconds even on a fast machine)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    hist = (killed / "history.csv").read_text().strip().splitlines()
    assert len(hist) == 2, "the kill must land in epoch 2"
    r = subprocess.run([sys.executable, "-m", "medcls.cli", "train", "--resume", str(killed)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    for name in ("last.safetensors", "best.safetensors"):  # best: the weight EMA resumes exactly too
        a, b = load_file(full / name), load_file(killed / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ma, mb = (json.loads((d / "metrics.json").read_text())["test"] for d in (full, killed))
    assert ma["auc"] == mb["auc"] and ma["acc"] == mb["acc"]
    import csv

    def rows(d):  # history.csv as written, but for the timing columns
        return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                for r in csv.DictReader((d / "history.csv").open())]

    assert rows(full) == rows(killed)  # epochs stay integers after a resume, too


def test_checkpoints_are_timed_and_the_final_epoch_always_lands(medmnist_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from medcls.train import engine
    from medcls.train.config import TrainConfig

    writes = []
    save_state = engine.save_state
    monkeypatch.setattr(engine, "save_state", lambda path, st: (writes.append(int(st["epoch"])), save_state(path, st)))
    common = dict(data="breastmnist", data_dir=str(medmnist_dir), model="alexnet_onetower",
                  model_kwargs=SMALL_KW, epochs=3, max_train_samples=64, limit_eval_samples=32, device="cpu", seed=2,
                  refit=False)
    every = engine.fit(TrainConfig(out=str(tmp_path / "every"), checkpoint_every=0, **common))
    assert writes == [1, 2, 3]
    writes.clear()
    timed = engine.fit(TrainConfig(out=str(tmp_path / "timed"), checkpoint_every=3600, **common))
    assert writes == [3], "within the interval only the final epoch is checkpointed"
    for name in ("last.safetensors", "best.safetensors"):  # a best held back in memory is the same best
        a, b = load_file(every / name), load_file(timed / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert (every / "history.csv").read_text().count("\n") == (timed / "history.csv").read_text().count("\n") == 4


def _signal_at_first_validation(monkeypatch, times: int):
    """Send SIGINT ``times`` times while epoch 1 is being validated (deterministic, no wall clock)."""
    from medcls.train import engine

    predict, sent = engine.predict_items, []

    def patched(*a, **kw):
        if not sent:
            sent.append(True)
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return predict(*a, **kw)

    monkeypatch.setattr(engine, "predict_items", patched)


def test_ctrl_c_finishes_the_epoch_checkpoints_and_resumes_exactly(medmnist_dir, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    from medcls.train import engine

    args = ["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--model", "alexnet_onetower", *SMALL_HEAD,
            "--epochs", "3", "--batch-size", "32", "--max-train-samples", "64", "--init", "kaiming", "--seed", "4",
            "--device", "cpu", "--checkpoint-every", "3600", "--no-refit",
            "--mixup", "0.4"]  # mixup's draws come from the checkpointed generator, so a resume repeats them too
    full = tmp_path / "full"
    rc, _, err = run_cli(args + ["--out", full], capsys)
    assert rc == 0, err
    handler = signal.getsignal(signal.SIGINT)
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _signal_at_first_validation(m, times=1)
        rc, out, err = run_cli(args + ["--out", stopped], capsys)
    assert rc == 128 + signal.SIGINT, err
    assert f"--resume {stopped}" in err and "stopped after epoch 1/3" in err
    assert "interrupted" not in err, "the stop is reported once, as how to resume"
    assert signal.getsignal(signal.SIGINT) is handler, "fit restores the signal handlers it replaced"
    st = engine.load_state(stopped / "state.pt")
    assert int(st["epoch"]) == 1, "the stop checkpoints the epoch it finished, inside the 3600 s interval"
    assert len((stopped / "history.csv").read_text().strip().splitlines()) == 2
    assert not (stopped / "metrics.json").exists()
    rc, out, err = run_cli(["train", "--resume", stopped, "--epochs", "5", "--seed", "1"], capsys)
    assert rc == 2 and "drop --epochs, --seed" in err, "a resume refuses settings it would ignore"
    rc, out, err = run_cli(["train", "--resume", stopped, "--checkpoint-every", "0"], capsys)
    assert rc == 0, err
    assert "resuming" in out
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(full / name), load_file(stopped / name)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_second_ctrl_c_stops_at_once(medmnist_dir, tmp_path, monkeypatch):
    from medcls.errors import TrainingStopped
    from medcls.train import engine
    from medcls.train.config import TrainConfig

    handler = signal.getsignal(signal.SIGINT)
    _signal_at_first_validation(monkeypatch, times=2)
    cfg = TrainConfig(data="breastmnist", data_dir=str(medmnist_dir), model="alexnet_onetower",
                      model_kwargs=SMALL_KW, epochs=3, max_train_samples=64, limit_eval_samples=32, device="cpu",
                      out=str(tmp_path / "r"), checkpoint_every=3600, refit=False)
    with pytest.raises(KeyboardInterrupt) as exc:
        engine.fit(cfg)
    assert not isinstance(exc.value, TrainingStopped)
    assert not (tmp_path / "r" / "state.pt").exists(), "nothing was checkpointed: the epoch was abandoned"
    assert signal.getsignal(signal.SIGINT) is handler


def test_weight_ema_is_what_is_validated_and_kept(medmnist_dir, tmp_path):
    from safetensors.torch import load_file

    from medcls.train.config import TrainConfig
    from medcls.train.engine import fit

    common = dict(data="breastmnist", data_dir=str(medmnist_dir), model="alexnet_onetower",
                  model_kwargs=SMALL_KW, epochs=1, max_train_samples=96, limit_eval_samples=32, device="cpu", seed=1)
    with_ema = fit(TrainConfig(out=str(tmp_path / "ema"), **common))
    without = fit(TrainConfig(out=str(tmp_path / "raw"), ema=False, **common))
    cfg = json.loads((with_ema / "config.json").read_text())
    assert cfg["train"]["ema"] is True and cfg["schedule"]["ema_decay"] == TrainConfig.ema_decay(3)  # 96 images, batch 32
    raw_last, raw_best = load_file(without / "last.safetensors"), load_file(without / "best.safetensors")
    ema_last, ema_best = load_file(with_ema / "last.safetensors"), load_file(with_ema / "best.safetensors")
    assert raw_best.keys() == ema_best.keys()
    for k in raw_last:  # same training trajectory; without EMA the kept model is the trained one
        torch.testing.assert_close(raw_last[k], ema_last[k], rtol=0, atol=0)
        torch.testing.assert_close(raw_best[k], raw_last[k], rtol=0, atol=0)
    w = [k for k in ema_best if k.endswith("weight") and ema_best[k].ndim == 4][0]
    assert not torch.equal(ema_best[w], ema_last[w]), "with EMA the kept weights are the average, not the last step"


def test_predict_on_a_dicom_folder_holding_several_series(medmnist_dir, tmp_path, capsys):
    """A folder of radiographs (one single-file series each) and a folder of two CT series both predict."""
    import shutil

    from tests.io.test_volumes import _write_series

    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run, *FAST], capsys)
    assert rc == 0, err
    xrays = tmp_path / "xrays"
    xrays.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm"):
        shutil.copy(dcm(name), xrays / name)
    rc, out, err = run_cli(["predict", run, xrays, "--json"], capsys)
    recs = json.loads(out)
    assert rc == 0, err
    assert sorted(Path(r["path"]).name for r in recs) == ["CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm"]
    assert all("series_uid" not in r and "items" not in r for r in recs)
    cts = tmp_path / "cts"
    cts.mkdir()
    uids = {_write_series(cts, n=4): 4, _write_series(cts, n=3): 3}
    rc, out, err = run_cli(["predict", run, cts, "--json"], capsys)
    recs = json.loads(out)
    assert rc == 0, err
    assert {r["series_uid"]: r["items"] for r in recs} == uids and all(r["path"] == str(cts) for r in recs)
    rc, out, _ = run_cli(["predict", run, cts], capsys)
    assert all(f"{cts} [series {u}]" in out for u in uids)


def test_refit_trains_again_on_train_and_val(medmnist_dir, tmp_path, monkeypatch, capsys):
    """The first pass chooses the epoch; the second trains on train + val up to it; both resume exactly."""
    from safetensors.torch import load_file

    from medcls.train import engine

    args = ["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--model", "alexnet_onetower", *SMALL_HEAD,
            "--epochs", "3", "--batch-size", "32", "--max-train-samples", "64", "--init", "kaiming", "--seed", "5",
            "--device", "cpu", "--checkpoint-every", "3600", "--refit"]
    full = tmp_path / "full"
    rc, out, err = run_cli(args + ["--out", full], capsys)
    assert rc == 0, err
    assert "val (first pass): ACC" in out and "test: ACC" in out
    m = _check_run(full, 156)
    cfg, first = (json.loads((d / "config.json").read_text()) for d in (full, full / "selection"))
    import csv

    val_auc = [float(r["val_auc"]) for r in csv.DictReader((full / "selection" / "history.csv").open())]
    chosen = cfg["refit"]["epoch"]
    assert chosen == val_auc.index(max(val_auc)) + 1, "the refit stops at the epoch validation chose"
    assert cfg["refit"]["of_epochs"] == first["schedule"]["epochs"] == 3
    assert cfg["data"]["n_train_labelled"] == 64 + m["val"]["n"] == first["data"]["n_train_labelled"] + 78
    refit_hist = (full / "history.csv").read_text().splitlines()
    assert len(refit_hist) == chosen + 1 and "val_auc" not in refit_hist[0]
    rc, _, err = run_cli(["evaluate", full, "--split", "val"], capsys)
    assert rc == 2 and "val split is training data" in err and "selection" in err
    assert "Refit: a first pass" in (full / "report.html").read_text()

    # Ctrl-C in the first pass: the resume command names the run, which has no config.json of its own yet
    stopped = tmp_path / "stopped"
    with monkeypatch.context() as mp:
        _signal_at_first_validation(mp, times=1)
        rc, _, err = run_cli(args + ["--out", stopped], capsys)
    assert rc == 128 + signal.SIGINT and f"--resume {stopped}`" in err, err
    assert not (stopped / "config.json").exists() and (stopped / "selection" / "state.pt").is_file()
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--out", stopped], capsys)
    assert rc == 2 and "already holds a run" in err, "an interrupted first pass is a run too"
    # ... and Ctrl-C again, in the second pass (the only one training on more than 64 images)
    step, sent = engine.train_step, []

    def interrupt_refit(*a, **kw):
        if len(a[7]) > 64 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)
        return step(*a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(engine, "train_step", interrupt_refit)
        rc, out, err = run_cli(["train", "--resume", stopped], capsys)
    if chosen > 1:  # (a one-epoch refit finishes the epoch it was asked to stop after)
        assert sent and rc == 128 + signal.SIGINT and f"stopped after epoch 1/{chosen}" in err, err
        rc, out, err = run_cli(["train", "--resume", stopped], capsys)
    assert rc == 0, err
    for sub in ("selection/best.safetensors", "best.safetensors", "last.safetensors"):
        a, b = load_file(full / sub), load_file(stopped / sub)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert json.loads((stopped / "metrics.json").read_text())["test"]["auc"] == m["test"]["auc"]


def test_an_upsampled_run_trains_and_predicts_at_its_input_size(medmnist_dir, tmp_path, capsys):
    """--input-size: the items are resized before the network, and a run resizes what it predicts alike."""
    from medcls.data import load_dataset
    from medcls.infer import resize_items
    from medcls.runs import load_run
    from medcls.train.config import TrainConfig
    from medcls.train.data import prepare_data

    cfg = TrainConfig(data="breastmnist", data_dir=str(medmnist_dir), input_size=56, max_train_samples=64)
    d = prepare_data(cfg)
    plain = prepare_data(TrainConfig(data="breastmnist", data_dir=str(medmnist_dir), max_train_samples=64))
    assert d.train.x.shape[2:] == (56, 56) and d.val.x.shape[2:] == (56, 56)
    np.testing.assert_array_equal(d.train.x, resize_items(plain.train.x, 56))
    np.testing.assert_array_equal(d.train.y, plain.train.y)
    assert d.preparation == plain.preparation, "files are prepared as before; the run resizes them after"

    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", run, *FAST,
                          "--input-size", "56"], capsys)
    assert rc == 0, err
    r = load_run(run)
    assert r.config.model.input_size == 56
    assert "resized to 56 px" in (run / "model_card.md").read_text()
    ds = load_dataset(medmnist_dir / "breastmnist.npz")
    probs, _ = r.sample_probs(ds, "test")
    x, _ = ds.split("test")
    Image.fromarray(x[5, 0]).save(tmp_path / "t5.png")
    np.testing.assert_allclose(r.predict_files([tmp_path / "t5.png"])[0].probs, probs[5], atol=1e-5)
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--out", tmp_path / "bad", "--input-size", "20"], capsys)
    assert rc == 2 and "--input-size" in err
