"""Whole-volume runs through the CLI: AdrenalMNIST3D with ACS and 3-D networks, NIfTI and DICOM series files."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import dcm, medmnist_subset, run_cli

FAST = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-refit"]
# a 3-D network at 28^3 trains at a few volumes a second on one core: two batches of each class
SIZES = {"train": 16, "val": 8, "test": 8}


@pytest.fixture(scope="module")
def adrenal_subset(medmnist_dir, tmp_path_factory) -> Path:
    """A few real AdrenalMNIST3D volumes of each split, both classes, under the set's own name."""
    return medmnist_subset(medmnist_dir, "adrenalmnist3d", tmp_path_factory.mktemp("adrenal"), SIZES)


def _nifti():
    from nibabel.testing import data_path

    return Path(data_path) / "anatomical.nii"


def _ct_series(folder: Path) -> Path:
    from tests.io.test_volumes import _write_series

    folder.mkdir()
    _write_series(folder, n=6)
    return folder


@pytest.mark.parametrize("mode", ["acs", "3d"])
def test_train_evaluate_predict_explain_a_volume_run(mode, adrenal_subset, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", adrenal_subset, "--model", "vgg11_bn", "--volume-mode", mode,
                            "--out", run, *FAST], capsys)
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["name"] == f"vgg11_bn_{mode}" and cfg["data"]["volume_mode"] == mode
    assert cfg["preprocess"]["preparation"]["volume_mode"] == mode
    assert "1x28x28x28" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == SIZES["test"], "one result per volume, not per slice"
    assert (run / "gallery.png").is_file()

    rc, out, err = run_cli(["evaluate", run], capsys)
    assert rc == 0, err
    assert json.loads((run / "metrics.json").read_text())["test"]["auc"] == pytest.approx(metrics["test"]["auc"])

    series = _ct_series(tmp_path / "ct")
    rc, out, err = run_cli(["predict", run, _nifti(), series, "--json"], capsys)
    assert rc == 0, err
    recs = json.loads(out)
    assert [Path(r["path"]).name for r in recs] == ["anatomical.nii", "ct"]
    for r in recs:
        p = r["probabilities"]
        assert set(p) == {"normal", "hyperplasia"} and abs(sum(p.values()) - 1) < 1e-4
        assert "items" not in r, "a volume is one item"

    rc, out, err = run_cli(["explain", run, series, "--out", tmp_path / "maps"], capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "maps" / "ct.json").read_text())
    assert len(rec["peak"]["input_voxel"]) == 3 and all(0 <= v < 28 for v in rec["peak"]["input_voxel"])
    z, y, x = rec["peak"]["voxel"]  # in the series' own voxels: 6 slices of 128 x 128
    assert 0 <= z < 6 and 0 <= y < 128 and 0 <= x < 128
    assert (tmp_path / "maps" / "ct.png").is_file()

    rc, out, err = run_cli(["predict", run, dcm("RG1_UNCI.dcm")], capsys)
    assert rc != 0 and "2-D image" in err and "RG1_UNCI.dcm" in err and "Traceback" not in err
    if mode == "acs":
        _served(run, tmp_path)
        rc, out, err = run_cli(["cluster", "--data", adrenal_subset, "--features", f"cnn:{run}", "--out",
                                tmp_path / "clusters"], capsys)
        assert rc == 0, err
        assert json.loads((tmp_path / "clusters" / "cluster.json").read_text())["n"] == SIZES["train"]  # one per volume


def _served(run: Path, tmp_path: Path) -> None:
    """The service answers for a zipped CT series with a preview slice and the map's peak voxel."""
    import base64
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from medcls.serve import create_app
    from tests.test_serve import _zipped_series

    with TestClient(create_app([run], device="cpu"), raise_server_exceptions=False) as c:
        (about,) = c.get("/v1/models").json()
        assert about["model"] == "vgg11_bn_acs" and "28^3" in about["preparation"]
        r = c.post(f"/v1/models/{run.name}/predict?preview=true&explain=gradcam",
                   files={"file": ("series.zip", _zipped_series(tmp_path))})
        body = r.json()
        assert r.status_code == 200, body
        assert body["volume"] is True and body["items"] == 1 and "ACS" in body["preparation"]
        assert Image.open(io.BytesIO(base64.b64decode(body["preview_png"]))).size == (28, 28)
        assert len(body["explain"]["peak"]["input_voxel"]) == 3
        r = c.post(f"/v1/models/{run.name}/predict", files={"file": ("a.nii", _nifti().read_bytes())})
        assert r.status_code == 200 and r.json()["volume"] is True


def test_a_volume_run_resumes_bit_identically(adrenal_subset, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    from tests.train.test_train_cli import _signal_at_first_validation

    args = ["train", "--data", adrenal_subset, "--model", "alexnet_3d", "--epochs", "2", "--batch-size", "8",
            "--device", "cpu", "--checkpoint-every", "3600", "--no-refit", "--seed", "2"]
    full, stopped = tmp_path / "full", tmp_path / "stopped"
    rc, _, err = run_cli(args + ["--out", full], capsys)
    assert rc == 0, err
    with monkeypatch.context() as m:
        _signal_at_first_validation(m, times=1)
        rc, _, err = run_cli(args + ["--out", stopped], capsys)
    assert rc == 130 and "stopped after epoch 1/2" in err, err
    rc, _, err = run_cli(["train", "--resume", stopped], capsys)
    assert rc == 0, err
    for name in ("last.safetensors", "best.safetensors"):
        a, b = load_file(full / name), load_file(stopped / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_volume_files_train_whole_at_a_chosen_size_and_spacing(tmp_path, capsys):
    """A folder of NIfTI volumes (the real nibabel MR, shifted and mirrored copies) as a 3-D dataset."""
    import nibabel as nib

    img = nib.load(_nifti())
    data = np.asarray(img.dataobj, dtype=np.float32)
    root = tmp_path / "vols"
    rng = np.random.default_rng(0)
    for label, flip in (("left", False), ("right", True)):
        (root / label).mkdir(parents=True)
        for i in range(6):
            v = np.roll(data, int(rng.integers(-3, 4)), axis=0)
            v = v[::-1] if flip else v
            nib.save(nib.Nifti1Image(np.ascontiguousarray(v), img.affine), root / label / f"v{i}.nii")
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", root, "--model", "alexnet_3d", "--size", "32", "--volume-spacing",
                            "6", "--out", run, *FAST], capsys)
    assert rc == 0, err
    prep = json.loads((run / "config.json").read_text())["preprocess"]["preparation"]
    assert prep["volume_mode"] == "3d" and prep["volume_spacing"] == 6 and prep["size"] == 32
    rc, out, err = run_cli(["predict", run, root / "left" / "v0.nii", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)[0]["class"] in ("left", "right")


def test_volume_modes_refuse_what_they_cannot_do(medmnist_dir, adrenal_subset, tmp_path, capsys):
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--volume-mode", "acs",
                          "--out", tmp_path / "a", *FAST], capsys)
    assert rc == 2 and "2-D images" in err
    rc, _, err = run_cli(["train", "--data", adrenal_subset, "--model", "vgg11_bn_acs", "--volume-mode", "2.5d",
                          "--out", tmp_path / "b", *FAST], capsys)
    assert rc == 2 and "does not go with it" in err
    rc, _, err = run_cli(["train", "--data", adrenal_subset, "--model", "vgg11_bn_3d", "--volume-spacing", "2",
                          "--out", tmp_path / "c", *FAST], capsys)
    assert rc == 2 and "already resampled" in err
    rc, _, err = run_cli(["train", "--data", adrenal_subset, "--volume-spacing", "2", "--out", tmp_path / "d",
                          *FAST], capsys)
    assert rc == 2 and "--volume-mode acs or 3d" in err
