"""predict --out: streamed over folders and manifests, decoded in workers, chunked, resumable, sharded, merged."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medcls.batch import Shard, read_predictions
from medcls.errors import MedclsError
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_run(medmnist_dir, tmp_path_factory):
    from medcls.cli import main

    out = tmp_path_factory.mktemp("run") / "r"
    rc = main(["train", "--data", "pneumoniamnist", "--data-dir", str(medmnist_dir), "--model", "vgg11",
               "--model-arg", "fc_width=32", "--epochs", "1", "--max-train-samples", "64", "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    """Real DICOMs (pydicom's own test files, in sub-folders), a file that is not one, and a PNG."""
    import pydicom
    from PIL import Image

    src = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    root = tmp_path_factory.mktemp("inputs")
    for i, f in enumerate(sorted(src.glob("*.dcm"))[:40]):
        d = root / f"part{i % 3}"
        d.mkdir(exist_ok=True)
        shutil.copy(f, d / f.name)
    (root / "part0" / "broken.dcm").write_bytes(b"DICM but not really" * 10)
    import numpy as np

    Image.fromarray(np.add.outer(np.arange(30), np.arange(40)).astype(np.uint8)).save(root / "part1" / "grey.png")
    return root


def _same(rows, ref):
    """The same answers: text exactly, probabilities up to float noise (batches differ between runs)."""
    assert len(rows) == len(ref)
    for r, q in zip(rows, ref):
        assert r.keys() == q.keys()
        for k in r:
            if k.startswith("p_") and r[k] is not None:
                assert r[k] == pytest.approx(q[k], abs=1e-5)
            else:
                assert r[k] == q[k], k


def test_sharded_prediction_merges_to_what_one_process_predicts(tiny_run, dicom_folder, tmp_path, capsys):
    whole = tmp_path / "whole.csv"
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", whole, "--workers", "2", "--chunk", "5"],
                         capsys)
    assert rc == 0, err
    rows = read_predictions(whole)
    assert not Path(str(whole) + ".parts").exists()  # merged, parts gone
    # every input once, in the order `medcls predict` (no --out) lists them; bad files are rows with their error
    rc, out, _ = run_cli(["predict", tiny_run, dicom_folder, "--json"], capsys)
    import json

    listed = json.loads(out)
    assert [r["path"] for r in rows] == [r["path"] for r in listed]
    broken = [r for r in rows if r["path"].endswith("broken.dcm")]
    assert len(broken) == 1 and broken[0]["error"] and broken[0]["class"] == ""
    for r, ref in zip(rows, listed):
        if "probabilities" in ref:
            assert r["error"] == "" and r["class"] == ref["class"]
            for name, p in ref["probabilities"].items():
                assert r[f"p_{name}"] == pytest.approx(p, abs=1e-5)
        else:
            assert r["error"] and r["p_normal"] is None
    assert any(r["path"].endswith("grey.png") and r["class"] for r in rows)

    # two shards, as two SLURM array tasks would run them, read in this process (no workers); the last merges
    sharded = tmp_path / "sharded.csv"
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", sharded, "--workers", "0", "--chunk", "3",
                          "--shard", "1/2"], capsys)
    assert rc == 0 and not sharded.exists() and "merged into" in err
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", sharded, "--workers", "0", "--chunk", "3",
                          "--shard", "0/2"], capsys)
    assert rc == 0 and sharded.exists(), err
    _same(read_predictions(sharded), rows)


def test_resume_predicts_only_what_a_stopped_job_left(tiny_run, dicom_folder, tmp_path, capsys):
    from medcls.batch import _columns, _write_part

    full_out = tmp_path / "full.csv"
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", full_out, "--workers", "0", "--chunk", "4"],
                         capsys)
    assert rc == 0, err
    full = read_predictions(full_out)
    # a job stopped after two chunks of four: its parts are there (atomically written), the merged file is not
    stopped = tmp_path / "stopped.csv"
    parts = Path(str(stopped) + ".parts") / Shard(0, 1).name
    parts.mkdir(parents=True)
    cols = list(full[0].keys())
    assert cols == _columns(["normal", "pneumonia"])
    _write_part(parts / "chunk-000000.csv", cols, [dict(r, p_normal=-1.0) for r in full[:4]])  # marked
    _write_part(parts / "chunk-000001.csv", cols, full[4:8])
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", stopped, "--chunk", "4"], capsys)
    assert rc == 2 and "--resume" in err  # never silently mixed with an earlier job
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", stopped, "--chunk", "4", "--resume"], capsys)
    assert rc == 0, err
    assert f"{len(full) - 8} inputs" in err  # the finished chunks were not predicted again
    merged = read_predictions(stopped)
    assert [r["p_normal"] for r in merged[:4]] == [-1.0] * 4  # kept as they were
    _same(merged[4:], full[4:])


def test_parquet_and_manifests(tiny_run, dicom_folder, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    files = sorted(p for p in dicom_folder.rglob("*") if p.is_file())[:6]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id\n" + "".join(f"{os.path.relpath(p, tmp_path)},P{i}\n"
                                                       for i, p in enumerate(files)) + ",P9\n")
    out = tmp_path / "p.parquet"
    rc, _, err = run_cli(["predict", tiny_run, manifest, "--out", out, "--chunk", "2", "--workers", "1"], capsys)
    assert rc == 0, err
    rows = read_predictions(out)
    assert [Path(r["path"]).resolve() for r in rows[:-1]] == [p.resolve() for p in files]
    assert rows[-1]["error"] == "left out: no path in this row"
    import pyarrow.parquet as pq

    schema = pq.read_schema(str(out))
    assert str(schema.field("p_normal").type) == "double" and str(schema.field("items").type) == "int64"


def test_bad_options_are_one_line_errors(tiny_run, dicom_folder, tmp_path, capsys):
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", tmp_path / "p.txt"], capsys)
    assert rc == 2 and ".csv or .parquet" in err
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", tmp_path / "p.csv", "--shard", "2/2"], capsys)
    assert rc == 2 and "0 to N - 1" in err
    rc, _, err = run_cli(["predict", tiny_run, dicom_folder, "--out", tmp_path / "p.csv", "--json"], capsys)
    assert rc == 2 and "--json" in err
    with pytest.raises(MedclsError):
        Shard.parse("one of two")


def test_torchrun_processes_each_take_a_shard_and_the_last_merges(tiny_run, dicom_folder, tmp_path, capsys):
    out = tmp_path / "tr.csv"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "medcls", "predict", str(tiny_run), str(dicom_folder), "--out", str(out),
                        "--workers", "0", "--chunk", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shard 0/2" in r.stderr and "shard 1/2" in r.stderr
    one = tmp_path / "one.csv"
    rc, _, _ = run_cli(["predict", tiny_run, dicom_folder, "--out", one, "--workers", "0"], capsys)
    assert rc == 0
    _same(read_predictions(out), read_predictions(one))


def test_predictions_per_patient_from_a_manifest(tiny_run, dicom_folder, tmp_path, capsys):
    files = sorted(p for p in dicom_folder.rglob("*.dcm"))[:12]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,patient_id\n" + "".join(f"{p},P{i // 3}\n" for i, p in enumerate(files)))
    out = tmp_path / "p.csv"
    rc, _, err = run_cli(["predict", tiny_run, manifest, "--out", out, "--group", "patient_id", "--aggregate", "max",
                          "--workers", "0"], capsys)
    assert rc == 0, err
    rows = read_predictions(out)
    assert [r["group"] for r in rows] == [f"P{i // 3}" for i in range(len(files))]
    groups = {g["group"]: g for g in read_predictions(tmp_path / "p.groups.csv")}
    for g, rec in groups.items():
        mine = [r for r in rows if r["group"] == g and r["p_pneumonia"] is not None]
        assert int(rec["images"]) == len(mine)
        assert float(rec["p_pneumonia"]) == pytest.approx(max(r["p_pneumonia"] for r in mine), abs=1e-6)
    assert set(groups) <= {f"P{i}" for i in range(4)}
    rc, _, err = run_cli(["predict", tiny_run, manifest, "--out", tmp_path / "q.csv", "--group", "site"], capsys)
    assert rc == 2 and "no column 'site'" in err
