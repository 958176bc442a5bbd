"""NIfTI volumes and DICOM series assembled from slices."""

import os
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medcls.errors import ReadError
from medcls.io import read
from medcls.io.series import read_series
from tests.conftest import dcm, run_cli

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


@pytest.mark.parametrize("name,shape,spacing,frames", [
    ("anatomical.nii", (25, 41, 33), (2.0, 2.0, 2.0), 1),
    ("example4d.nii.gz", (2, 24, 96, 128), (2.2, 2.0, 2.0), 2),
    ("standard.nii.gz", (7, 5, 4), (2.0, 3.0, 1.0), 1),
])
def test_nibabel_volumes(name, shape, spacing, frames):
    arr, meta = read(NIB_DATA / name)
    assert arr.shape == shape and meta.frames == frames
    assert meta.spacing == pytest.approx(spacing, abs=1e-5)
    assert meta.orientation == "SPL" and meta.is_volume


def test_nifti_reoriented_whatever_the_affine(tmp_path):
    data = np.zeros((4, 5, 6), np.float32)  # (x, y, z) voxels
    data[3, 0, 5] = 7.0  # a marker
    ras = np.diag([1.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "ras.nii.gz")
    # The same physical image stored with x flipped (LAS): voxel i -> 3 - i.
    las = ras.copy()
    las[0, 0], las[0, 3] = -1.0, 3.0
    nib.save(nib.Nifti1Image(data[::-1].copy(), las), tmp_path / "las.nii")
    a, ma = read(tmp_path / "ras.nii.gz")
    b, mb = read(tmp_path / "las.nii")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 5, 4) and ma.spacing == pytest.approx((3.0, 2.0, 1.0))
    # LPS target: x (R->L) is reversed relative to RAS, y (A->P) too; z stays.
    z, y, x = np.argwhere(a == 7.0)[0]
    assert (z, y, x) == (5, 4, 0)


def _write_series(folder: Path, n=6, dz=2.5, uid=None, start_value=0, shuffle=True):
    src = pydicom.dcmread(dcm("CT_small.dcm"))
    uid = uid or generate_uid()
    order = list(range(n))
    if shuffle:
        random.Random(0).shuffle(order)
    raw = src.pixel_array
    for k in order:
        ds = src.copy()
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n - k  # deliberately disagrees with position
        ds.ImagePositionPatient = [0.0, 0.0, 100.0 + k * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        px = raw.copy()
        px[0, 0] = start_value + k  # slice marker
        ds.PixelData = px.astype(raw.dtype).tobytes()
        ds.save_as(folder / f"img_{uid[-6:]}_{random.Random(k).randint(0, 10**6):07d}.dcm")
    return uid


def test_series_sorted_by_position_with_spacing(tmp_path):
    _write_series(tmp_path, n=6, dz=2.5)
    vol, meta = read(tmp_path)
    assert vol.shape == (6, 128, 128) and meta.format == "dicom-series"
    ds = pydicom.dcmread(dcm("CT_small.dcm"))
    slope, inter = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    markers = (vol[:, 0, 0] - inter) / slope
    np.testing.assert_allclose(markers, np.arange(6))
    assert meta.spacing == pytest.approx((2.5, 0.661468, 0.661468))
    assert meta.orientation == "SPL" and meta.units == "HU"


def test_mixed_series_told_apart(tmp_path, capsys):
    a = _write_series(tmp_path, n=3, dz=1.0)
    b = _write_series(tmp_path, n=4, dz=5.0, start_value=100)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ReadError, match="2 DICOM series"):
        read(tmp_path)
    va, _ = read_series(tmp_path, a)
    vb, mb = read_series(tmp_path, b)
    assert va.shape[0] == 3 and vb.shape[0] == 4 and mb.spacing[0] == pytest.approx(5.0)
    import json

    rc, out, err = run_cli(["info", "--json", tmp_path], capsys)
    recs = json.loads(out)
    assert rc == 0 and sorted(r["shape"][0] for r in recs) == [3, 4]
    assert "notes.txt" in err  # the bad file is listed, the good ones read
