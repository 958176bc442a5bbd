import json
import subprocess
import sys

from medcls.io.samples import pydicom_test_dir
from tests.conftest import dcm, run_cli


def test_info_corrupt_dicom_exits_2_without_traceback():
    bad = pydicom_test_dir() / "MR_truncated.dcm"
    r = subprocess.run([sys.executable, "-m", "medcls.cli", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert str(bad) in r.stderr and "truncated" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert len(r.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback():
    args = [sys.executable, "-m", "medcls.cli", "data", "no_such_dataset"]
    plain = subprocess.run(args, capture_output=True, text=True)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "no_such_dataset" in plain.stderr
    debug = subprocess.run(args[:3] + ["--debug"] + args[3:], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "DataError" in debug.stderr


def test_info_json(capsys, tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    rc, out, err = run_cli(["info", "--json", dcm("CT_small.dcm"), dcm("MR_small.dcm"), empty], capsys)
    recs = json.loads(out)
    assert rc == 2 and len(recs) == 2 and "empty.dcm: file is empty" in err
    for r in recs:
        assert {"path", "modality", "shape", "spacing", "min", "max", "frames", "transfer_syntax"} <= set(r)
    assert recs[0]["modality"] == "CT" and round(recs[0]["min"]) == -896 and round(recs[0]["max"]) == 1167


def test_data_summary_json(medmnist_dir, capsys):
    rc, out, _ = run_cli(["data", "pneumoniamnist", "--data-dir", medmnist_dir, "--json"], capsys)
    s = json.loads(out)
    assert rc == 0 and s["classes"] == ["normal", "pneumonia"] and s["channels"] == 1
    assert {k: v["total"] for k, v in s["counts"].items()} == {"train": 4708, "val": 524, "test": 624}
    assert s["image_size"] == [28, 28]


def test_demo_trains_evaluates_and_shows_predict(medmnist_dir, tmp_path, capsys):
    run = tmp_path / "demo"
    rc, out, err = run_cli(["demo", "--data-dir", medmnist_dir, "--model", "alexnet_onetower", "--epochs", "1",
                            "--max-train-samples", "128", "--out", run], capsys)
    assert rc == 0, err
    assert "pneumoniamnist" in out and "HU" in out and "test: ACC" in out
    assert str(run / "report.html") in out and f"medcls predict {run}" in out
    example = run / "example_test_image.png"
    rc, out, _ = run_cli(["predict", run, example, "--json"], capsys)
    assert rc == 0 and json.loads(out)[0]["class"] in ("normal", "pneumonia")


def test_usage_error_exits_2_with_a_message(capsys):
    rc, out, err = run_cli(["info"], capsys)  # missing argument
    assert rc == 2 and "Traceback" not in err
    rc, out, err = run_cli(["no-such-command"], capsys)
    assert rc == 2


def test_ctrl_c_in_a_command_says_interrupted_and_exits_130(capsys, monkeypatch):
    import medcls.data

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(medcls.data, "load_dataset", interrupted)
    rc, out, err = run_cli(["data", "pneumoniamnist"], capsys)
    assert rc == 130 and "interrupted" in err and "Traceback" not in err


def test_an_output_the_file_system_refuses_is_one_line_naming_it(medmnist_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "run"
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", out,
                          "--epochs", "1", "--max-train-samples", "32", "--device", "cpu"], capsys)
    assert rc == 1 and str(out) in err and "Not a directory" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_a_full_disk_while_saving_says_so(medmnist_dir, tmp_path, capsys, monkeypatch):
    """torch.save and safetensors hide ENOSPC in their own errors; the user still hears 'no space left'."""
    import shutil
    from collections import namedtuple

    import medcls.train.checkpoint as ckpt

    def full(*a, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 214093824 vs 214093712")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 << 30, 10 << 30, 0))
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", tmp_path / "run",
                          "--model", "alexnet_onetower", "--epochs", "1", "--max-train-samples", "32",
                          "--device", "cpu"], capsys)
    assert rc == 2 and "no space left" in err and "state.pt" in err and "internal error" not in err
