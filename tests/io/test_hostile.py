"""Hostile input: a corpus of broken, forged and garbage files made here from real ones, through the CLI.

Every class gets exit code 2 and one line naming the file (or an explicit warning
where the answer still means something), never a traceback or exit 1; headers
claiming huge images are refused within a memory and time bound; a FIFO returns
at once.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from medcls.errors import MedclsError, ReadError
from medcls.io import read
from tests.conftest import dcm, run_cli

REPO = Path(__file__).resolve().parents[2]


def _refused(rc: int, err: str, path) -> str:
    """The one stderr line about ``path``; asserts it is a clean refusal."""
    lines = [line for line in err.splitlines() if str(path) in line]
    assert rc == 2, err
    assert lines and "Traceback" not in err and "internal error" not in err, err
    assert len([x for x in lines if x.startswith("medcls: error")]) == 1, err
    return lines[0]


def _ct(tmp_path: Path, name: str, **changes) -> Path:
    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    for k, v in changes.items():
        setattr(ds, k, v)
    out = tmp_path / name
    ds.save_as(out)
    return out


# ---------------------------------------------------------------- bounded memory, no hangs


def _rss_of(code: str, env=None) -> tuple[int, float, str]:
    """Peak resident memory (MiB), seconds and stderr of ``code`` run in a fresh interpreter."""
    probe = ("import resource, sys, time\nt = time.time()\n" + code +
             "\nprint(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, time.time() - t)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                       env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr[-2000:]
    mib, secs = r.stdout.split()[-2:]
    return int(mib), float(secs), r.stderr


def _base_rss() -> int:
    return _rss_of("import medcls.io, numpy, pydicom, nibabel, PIL.Image")[0]


def test_headers_claiming_huge_images_are_refused_before_decoding(tmp_path):
    big_dcm = _ct(tmp_path, "big.dcm", Rows=20000, Columns=20000)
    # a 6 KB NIfTI whose header declares 2048 x 2048 x 2048 float32 voxels (32 GiB)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((2048, 2048, 2048))
    hdr.set_data_dtype(np.float32)
    with gzip.open(tmp_path / "big.nii.gz", "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 6000)
    # a PNG whose header says 30000 x 30000 (its pixel data is a few bytes)
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    png = bytearray((tmp_path / "small.png").read_bytes())
    png[16:24] = struct.pack(">II", 30000, 30000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (tmp_path / "big.png").write_bytes(bytes(png))
    base = _base_rss()
    for f in (big_dcm, tmp_path / "big.nii.gz", tmp_path / "big.png"):
        mib, secs, _ = _rss_of(f"""
from medcls.io import read
from medcls.errors import ReadError
try:
    read({str(f)!r})
except ReadError as exc:
    assert "more than the limit" in str(exc), exc
else:
    raise SystemExit("not refused")
""")
        assert mib - base < 200 and secs < 20, (f.name, mib, base, secs)


def test_a_compressed_stream_larger_than_its_header_says_is_refused(tmp_path):
    """JPEG 2000 data whose own SIZ marker claims 20000 x 20000 inside a 64 x 64 DICOM."""
    ds = pydicom.dcmread(dcm("MR_small_jp2klossless.dcm"))
    from pydicom.encaps import encapsulate, generate_frames

    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    siz = frame.index(b"\xff\x51")
    frame[siz + 6:siz + 14] = struct.pack(">II", 20000, 20000)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(tmp_path / "forged_j2k.dcm")
    with pytest.raises(ReadError, match="compressed image's own header .20000 x 20000"):
        read(tmp_path / "forged_j2k.dcm")


def test_a_deflated_data_set_inflating_past_the_budget_is_refused(tmp_path, monkeypatch):
    src = dcm("image_dfl.dcm")  # a real deflated file: it reads within the default budget
    arr, meta = read(src)
    assert arr.shape == (512, 512)
    monkeypatch.setenv("MEDCLS_MAX_PIXELS", "10000")  # 40,000 bytes of data set
    with pytest.raises(ReadError, match="inflates to more than 40,000 bytes"):
        read(src)


def test_a_fifo_returns_at_once(tmp_path, capsys):
    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    for cmd in (["info", fifo], ["data", tmp_path]):
        rc, _, err = run_cli(cmd, capsys)
        assert rc == 2 and time.monotonic() - t0 < 10, err
    assert "FIFO" in _refused(*run_cli(["info", fifo], capsys)[::2], fifo)


# ---------------------------------------------------------------- garbage never gets an answer


@pytest.fixture(scope="module")
def run(medmnist_dir, tmp_path_factory):
    """A small trained run to predict with (PneumoniaMNIST, one epoch)."""
    out = tmp_path_factory.mktemp("run") / "r"
    from medcls.cli import main

    rc = main(["train", "--data", "pneumoniamnist", "--data-dir", str(medmnist_dir), "--out", str(out),
               "--model", "alexnet_onetower", "--epochs", "1", "--batch-size", "32", "--max-train-samples", "64",
               "--init", "kaiming", "--device", "cpu", "--model-arg", "fc_width=64"])
    assert rc == 0
    return out


def test_garbage_pixels_are_refused_not_classified(run, tmp_path, capsys):
    nan = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 16, 16), np.nan, np.float32), np.eye(4)), nan)
    flat = tmp_path / "flat.png"
    Image.new("L", (32, 32), 7).save(flat)
    huge = _ct(tmp_path, "huge_slope.dcm", RescaleSlope=1e308)
    nan_slope = _ct(tmp_path, "nan_slope.dcm", RescaleSlope="NaN")
    for f, says in ((nan, "not finite"), (flat, "same value"), (huge, "not finite"), (nan_slope, "not a finite")):
        rc, out, err = run_cli(["predict", run, f, "--json"], capsys)
        line = _refused(rc, err, f)
        assert says in line, line
        assert all("class" not in r for r in json.loads(out))
    # where a user asks, non-finite values are replaced, and the answer says so
    nib.save(nib.Nifti1Image(np.where(np.eye(16)[None] > 0, np.nan, 1.0) * np.arange(8)[:, None, None] + 1,
                             np.eye(4)), tmp_path / "some_nan.nii.gz")
    rc, out, err = run_cli(["predict", run, tmp_path / "some_nan.nii.gz", "--allow-nonfinite", "--json"], capsys)
    rec = json.loads(out)[0]
    assert rc == 0 and "class" in rec and any("non-finite" in w for w in rec["warnings"]), err


def test_an_unusable_window_is_ignored_with_a_warning(run, tmp_path, capsys):
    f = _ct(tmp_path, "w0.dcm", WindowCenter=40, WindowWidth=0, Modality="CR")
    rc, out, err = run_cli(["predict", run, f, "--json"], capsys)
    rec = json.loads(out)[0]
    assert rc == 0 and "class" in rec, err
    assert any("window" in w for w in rec["warnings"]) and "window" in err


def test_a_file_unlike_the_training_data_says_so(run, capsys):
    rc, out, err = run_cli(["predict", run, dcm("MR_small.dcm"), dcm("US1_UNCR.dcm"), "--json"], capsys)
    recs = json.loads(out)
    assert rc == 0, err
    assert any("has not seen MR images" in w for w in recs[0]["warnings"])
    assert any("colour image, made grey" in w for w in recs[1]["warnings"])


# ---------------------------------------------------------------- nothing skipped in silence


def test_folders_predict_every_readable_file_and_list_the_rest(run, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(dcm("CT_small.dcm"), mixed / "ct.dcm")
    for i in range(2):
        Image.fromarray((np.arange(784).reshape(28, 28) * (i + 1) % 255).astype(np.uint8)).save(mixed / f"{i}.png")
    (mixed / "notes.txt").write_text("a note")
    os.mkfifo(mixed / "pipe.dcm")
    (mixed / "loop").symlink_to(mixed)  # a folder that contains itself
    rc, out, err = run_cli(["predict", run, mixed, "--json"], capsys)
    recs = json.loads(out)
    assert rc == 0, err
    assert sorted(Path(r["path"]).name for r in recs if "class" in r) == ["0.png", "1.png", "ct.dcm"]
    left = {Path(r["path"]).name: r["skipped"] for r in recs if "class" not in r}
    assert "notes.txt" in left and "FIFO" in left["pipe.dcm"] and "loop" in left
    assert all(f"{name}" in err for name in ("notes.txt", "pipe.dcm"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files to predict on" in _refused(*run_cli(["predict", run, empty], capsys)[::2], empty)


def test_a_series_with_a_missing_slice_is_refused_unless_allowed(run, tmp_path, capsys):
    from tests.io.test_volumes import _write_series

    folder = tmp_path / "series"
    folder.mkdir()
    _write_series(folder, n=6, shuffle=False)
    victim = sorted(folder.iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:2000])  # a truncated slice
    line = _refused(*run_cli(["predict", run, folder], capsys)[::2], folder)
    assert "1 file(s) of the series could not be read" in line and "--allow-gaps" in line
    rc, out, err = run_cli(["predict", run, folder, "--allow-gaps", "--json"], capsys)
    rec = json.loads(out)[0]
    assert rc == 0 and rec["items"] == 5 and rec["skipped"][0]["path"] == str(victim), err
    assert victim.name in err
    rc, out, err = run_cli(["info", folder, "--json"], capsys)  # info describes it, and says what is missing
    assert rc == 0 and any("could not be read" in w for w in json.loads(out)[0]["warnings"])


# ---------------------------------------------------------------- one line, exit 2, everywhere


def test_damaged_files_are_one_line_errors(tmp_path, capsys):
    ct = dcm("CT_small.dcm")
    corpus = {
        "truncated.dcm": ct.read_bytes()[:5000],
        "empty.dcm": b"",
        "garbage.dcm": b"DICM" * 50,
    }
    Image.new("RGB", (64, 64), (10, 20, 30)).save(tmp_path / "ok.png")
    corpus["truncated.png"] = (tmp_path / "ok.png").read_bytes()[:60]
    zero = nib.Nifti1Header()
    zero.set_data_shape((4, 0, 4))
    corpus["zero_dim.nii"] = zero.binaryblock + b"\0" * 4
    noise = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(noise, np.eye(4)), tmp_path / "ok.nii.gz")
    corpus["truncated.nii.gz"] = (tmp_path / "ok.nii.gz").read_bytes()[:8000]
    for name, data in corpus.items():
        (tmp_path / name).write_bytes(data)
        _refused(*run_cli(["info", tmp_path / name], capsys)[::2], tmp_path / name)


def test_damaged_datasets_are_refused_naming_the_row(tmp_path, capsys, medmnist_dir):
    def npz(name, **over):
        z = dict(np.load(medmnist_dir / "breastmnist.npz"))
        z.update(over)
        np.savez(tmp_path / name, **z)
        return tmp_path / name

    y = np.load(medmnist_dir / "breastmnist.npz")["train_labels"]
    cases = [
        (npz("nan.npz", train_labels=np.where(np.arange(len(y))[:, None] == 3, np.nan, y.astype(float))),
         "NaN or infinite"),
        (npz("negative.npz", train_labels=-np.ones_like(y, dtype=np.int64)), "negative"),
        (npz("one_class.npz", train_labels=np.zeros_like(y)), "only the class"),
    ]
    for path, says in cases:
        rc, _, err = run_cli(["train", "--data", path, "--out", tmp_path / "r", "--epochs", "1"], capsys)
        assert says in _refused(rc, err, path), err
    rc, _, err = run_cli(["train", "--data", medmnist_dir / "breastmnist.npz", "--size", "64",
                          "--out", tmp_path / "r"], capsys)
    assert "cannot apply" in _refused(rc, err, "breastmnist.npz")
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--size", "1", "--out", tmp_path / "r"], capsys)
    assert rc == 2 and "--size must be from 28" in err

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.fromarray((np.arange(784).reshape(28, 28) * (i + 1) % 251).astype(np.uint8)).save(imgs / f"{i}.png")
    manifests = {
        "conflict.csv": ("path,label\nimgs/0.png,a\nimgs/1.png,b\nimgs/0.png,b\n", "lines 2 and 4 with different labels"),
        "two_splits.csv": ("path,label,split\nimgs/0.png,a,train\nimgs/0.png,a,test\n", "in different splits"),
        "patient.csv": ("path,label,split,patient_id\nimgs/0.png,a,train,P1\nimgs/1.png,b,test,P1\n",
                        "patient is in the train split (line 2) and the test split (line 3)"),
    }
    for name, (text, says) in manifests.items():
        (tmp_path / name).write_text(text)
        rc, _, err = run_cli(["data", tmp_path / name], capsys)
        assert says in _refused(rc, err, tmp_path / name), err
    (tmp_path / "dup.csv").write_text("path,label\n" + "".join(f"imgs/{i}.png,{'ab'[i % 2]}\n" for i in range(4))
                                      + "imgs/1.png,b\n")
    rc, out, err = run_cli(["data", tmp_path / "dup.csv", "--json"], capsys)
    assert rc == 0 and sum(json.loads(out)["counts"]["train"].values()) <= 4 + 4  # kept once
    assert "line 6 repeats line 3" in err


def test_a_corrupt_run_folder_is_one_line_for_every_command(tmp_path, capsys, medmnist_dir):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    for cmd in (["predict", run_dir, dcm("CT_small.dcm")], ["evaluate", run_dir], ["train", "--resume", run_dir],
                ["ensemble", run_dir, run_dir, "--out", tmp_path / "e"], ["cluster", "--data", "breastmnist",
                                                                        "--features", f"cnn:{run_dir}",
                                                                        "--out", tmp_path / "c"]):
        rc, _, err = run_cli(cmd, capsys)
        assert rc == 2 and "config.json: corrupt run configuration" in err and "internal error" not in err, cmd


# ---------------------------------------------------------------- an ordinal task, end to end


def test_an_ordinal_set_trains_evaluates_and_predicts(tmp_path, capsys):
    """RetinaMNIST's registry entry says ordinal (5 grades): one meaning from training to the report."""
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 5, (n, 1)).astype(np.uint8)
        x = (rng.normal(40 * y[:, :, None, None], 20, (n, 28, 28, 3)).clip(0, 255)).astype(np.uint8)
        return x, y

    parts = {f"{s}_{k}": v for s, n in (("train", 120), ("val", 40), ("test", 40))
             for k, v in zip(("images", "labels"), split(n))}
    np.savez(tmp_path / "retinamnist.npz", **parts)
    out = tmp_path / "run"
    rc, text, err = run_cli(["train", "--data", "retinamnist", "--data-dir", tmp_path, "--out", out,
                             "--model", "alexnet_onetower", "--model-arg", "fc_width=64", "--epochs", "2",
                             "--batch-size", "32", "--no-refit"],
                            capsys)
    assert rc == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert json.loads((out / "config.json").read_text())["data"]["task"] == "ordinal"
    assert m["test"]["n"] == 40 and len(m["test"]["confusion"]) == 5 and 0 <= m["test"]["auc"] <= 1
    rc, _, err = run_cli(["evaluate", out, "--data-dir", tmp_path], capsys)
    assert rc == 0, err
    Image.fromarray(parts["test_images"][0]).save(tmp_path / "eye.png")
    rc, text, err = run_cli(["predict", out, tmp_path / "eye.png", "--json"], capsys)
    assert rc == 0 and len(json.loads(text)[0]["probabilities"]) == 5, err
    rc, _, err = run_cli(["ensemble", out, out, "--out", tmp_path / "ens"], capsys)
    assert rc == 0, err


def test_max_pixels_option_and_environment(tmp_path, capsys, monkeypatch):
    rc, _, err = run_cli(["--max-pixels", "1000", "info", dcm("CT_small.dcm")], capsys)
    assert "more than the limit of 1,000" in _refused(rc, err, dcm("CT_small.dcm"))
    rc, _, _ = run_cli(["info", dcm("CT_small.dcm")], capsys)
    assert rc == 0, "the option lasts for its command only"
    monkeypatch.setenv("MEDCLS_MAX_PIXELS", "nonsense")
    with pytest.raises(MedclsError, match="MEDCLS_MAX_PIXELS must be a number"):
        read(dcm("CT_small.dcm"))
