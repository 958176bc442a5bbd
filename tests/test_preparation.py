"""Preparation is a user's choice: options reach training, are saved, and predict repeats them exactly."""

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medcls import modalities as M
from medcls.errors import MedclsError
from medcls.io import read
from tests.conftest import dcm, run_cli

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
FAST = ["--model", "alexnet_onetower", "--epochs", "1", "--batch-size", "32", "--init", "kaiming", "--device", "cpu"]


def test_three_ct_windows_give_three_different_channels():
    hu, meta = read(dcm("CT_small.dcm"))
    x = M.prepare(hu, meta, M.PrepOptions(ct_windows=("lung", "mediastinum", "bone")).preparation(32))
    assert x.shape == (1, 3, 32, 32)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert np.abs(x[0, i] - x[0, j]).mean() > 0.05, (i, j)
    one = M.prepare(hu, meta, M.PrepOptions().preparation(32))  # the default: one soft-tissue window
    assert one.shape == (1, 1, 32, 32)
    np.testing.assert_allclose(one[0, 0], M.resize(M.window(hu, *M.HU_WINDOWS["abdomen"]), 32), atol=1e-6)


def test_ultrasound_is_cropped_to_its_scan_by_default():
    """US1_UNCR.dcm has hospital text above the scan and a caption and scale below: the crop drops them."""
    img, meta = read(dcm("US1_UNCR.dcm"))
    x = img.astype(np.float32) / 255
    r0, c0, r1, c1 = M.content_box(x)
    assert r0 > 100 and r1 < 360, "the text block above (rows 20-100) and the caption below (row 365) are out"
    assert c0 < 20 and c1 > 620, "the scan spans the frame's width"
    np.testing.assert_array_equal(M.crop_to_content(x), x[r0:r1, c0:c1])
    cropped, whole = (M.prepare(img, meta, M.Preparation(size=64, channels=3, crop=c)) for c in (None, False))
    assert M.Preparation().crops_ultrasound and not np.allclose(cropped, whole)
    # other modalities are never cropped
    hu, ct = read(dcm("CT_small.dcm"))
    np.testing.assert_array_equal(M.prepare(hu, ct, M.Preparation(size=32, crop=True)),
                                  M.prepare(hu, ct, M.Preparation(size=32, crop=False)))


def test_mri_normalisations_and_volume_axes_differ_on_real_files():
    mr, meta = read(dcm("MR_small.dcm"))
    p, z = (M.prepare(mr, meta, M.PrepOptions(mr_norm=n).preparation(32)) for n in ("percentile", "zscore"))
    assert p.shape == z.shape == (1, 1, 32, 32) and not np.allclose(p, z)
    vol, vmeta = read(NIB_DATA / "anatomical.nii")  # (Z, Y, X) = (25, 41, 33)
    counts = {axis: len(M.prepare(vol, vmeta, M.PrepOptions(volume_axis=axis).preparation(28)))
              for axis in M.VOLUME_AXES}
    assert counts == {"axial": 25, "coronal": 41, "sagittal": 33}


@pytest.mark.parametrize("kw,says", [
    (dict(ct_windows=("liver",)), "unknown CT window"),
    (dict(mr_norm="minmax"), "percentile or zscore"),
    (dict(volume_axis="oblique"), "axial, coronal or sagittal"),
    (dict(modality="pet"), "auto or one of xray, us, ct, mr, other"),
])
def test_bad_options_are_refused(kw, says, capsys):
    with pytest.raises(MedclsError, match=says):
        M.PrepOptions(**kw)
    flag = {"ct_windows": "--ct-windows", "mr_norm": "--mr-norm", "volume_axis": "--volume-axis",
            "modality": "--modality"}[next(iter(kw))]
    value = ",".join(kw[next(iter(kw))]) if isinstance(kw[next(iter(kw))], tuple) else kw[next(iter(kw))]
    rc, _, err = run_cli(["train", "--data", "breastmnist", flag, value], capsys)
    assert rc == 2 and says in err


def test_pixel_options_on_prepared_medmnist_data_are_refused(medmnist_dir, tmp_path, capsys):
    rc, _, err = run_cli(["train", "--data", "breastmnist", "--data-dir", medmnist_dir, "--out", tmp_path / "r",
                          "--clahe", "--us-crop", *FAST], capsys)
    assert rc == 2 and "already prepared" in err and "--clahe, --us-crop/--no-us-crop" in err
    assert not (tmp_path / "r").exists()


def _ct_manifest(root: Path) -> tuple[Path, list[Path]]:
    """Eight real CT DICOMs (pydicom, pydicom-data) in two classes with fixed splits."""
    names = ["CT_small.dcm", "693_UNCI.dcm", "693_J2KR.dcm", "bad_sequence.dcm",
             "693_UNCR.dcm", "explicit_VR-UN.dcm", "J2K_pixelrep_mismatch.dcm", "693_J2KI.dcm"]
    root.mkdir()
    rows, files = [], []
    for i, n in enumerate(names):
        f = root / n
        shutil.copy(dcm(n), f)
        files.append(f)
        rows.append(f"{n},{'a' if i < 4 else 'b'},{('train', 'train', 'val', 'test')[i % 4]}")
    (root / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    return root / "m.csv", files


def test_train_then_predict_prepares_a_file_exactly_as_training_did(pydicom_data, tmp_path, capsys):
    from medcls.runs import load_run

    manifest, files = _ct_manifest(tmp_path / "ct")
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", "--data", manifest, "--size", "32", "--ct-windows", "lung,mediastinum,bone",
                            "--out", run, *FAST], capsys)
    assert rc == 0, err
    prep = json.loads((run / "config.json").read_text())["preprocess"]["preparation"]
    assert prep["ct_windows"] == ["lung", "mediastinum", "bone"] and prep["channels"] == 3
    assert prep["modality"] == "ct", "a dataset of one modality pins it for predict"
    r = load_run(run)
    ds = r.load_dataset()
    for f in files:  # what the network trained on == what predict feeds it, to the bit
        trained = ds.images[np.array(ds.paths) == str(f)]
        np.testing.assert_array_equal(r.prepare_file(f), trained)
    assert len({ds.images[i].tobytes() for i in range(3)}) == 3
    # a NIfTI has no modality of its own: in a CT run it is windowed in HU like the training files
    hu, _ = read(dcm("CT_small.dcm"))
    nib.save(nib.Nifti1Image(hu.T[:, :, None].astype(np.float32), np.eye(4)), tmp_path / "ct.nii.gz")
    vol = r.prepare_file(tmp_path / "ct.nii.gz")
    assert vol.shape == (1, 3, 32, 32) and len({vol[0, c].tobytes() for c in range(3)}) == 3
    rc, out, err = run_cli(["predict", run, files[0], tmp_path / "ct.nii.gz", "--json"], capsys)
    assert rc == 0 and len(json.loads(out)) == 2, err


def test_volume_files_with_a_chosen_axis_and_mri_normalisation(tmp_path, capsys):
    from medcls.runs import load_run

    folder = tmp_path / "mr"
    for cls, names in (("a", ["anatomical.nii", "example_nifti2.nii.gz"]),
                       ("b", ["standard.nii.gz", "example4d.nii.gz"])):
        (folder / cls).mkdir(parents=True)
        for n in names:
            shutil.copy(NIB_DATA / n, folder / cls / n)
    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--data", folder, "--size", "28", "--modality", "mr", "--mr-norm", "zscore",
                          "--volume-axis", "coronal", "--out", run, *FAST], capsys)
    assert rc == 0, err
    r = load_run(run)
    p = r.preparation
    assert (p.modality, p.mr_norm, p.volume_axis) == ("mr", "zscore", 1)
    ds = r.load_dataset()
    f = folder / "a" / "anatomical.nii"
    items = r.prepare_file(f)
    assert len(items) == 41  # coronal slices of a (25, 41, 33) volume
    np.testing.assert_array_equal(items, ds.images[np.array(ds.paths) == str(f)])


def test_info_and_data_say_how_files_are_prepared(medmnist_dir, pydicom_data, capsys):
    rc, out, _ = run_cli(["info", dcm("CT_small.dcm"), dcm("US1_UNCR.dcm"), "--json"], capsys)
    recs = json.loads(out)
    assert rc == 0 and recs[0]["preparation"].startswith("ct: HU window abdomen (50/400)")
    assert "cropped to the scan sector" in recs[1]["preparation"]
    rc, out, _ = run_cli(["data", "breastmnist", "--data-dir", medmnist_dir, "--json"], capsys)
    s = json.loads(out)
    assert rc == 0 and s["preparation"].startswith("prepared by its authors") and "us: as stored" in s["preparation"]
