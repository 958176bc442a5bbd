"""DICOM reading on every real file shipped with pydicom and pydicom-data."""

import json

import numpy as np
import pydicom
import pytest

from medcls.errors import ReadError
from medcls.io import read
from medcls.io.samples import sample_dicoms
from tests.conftest import dcm

# Files with pixel data that must be rejected, and why. Everything else that
# carries pixel data must decode.
EXPECTED_REJECTS = {
    "MR_truncated.dcm": "truncated",
    "JPEG2000-embedded-sequence-delimiter.dcm": "decode",  # corrupt J2K codestream
    "emri_small_jpeg_2k_lossless_too_short.dcm": "truncated",  # file cut before its pixel data
}
# Files that decode only because medcls repairs or routes them, with the warning it gives (or None)
RECOVERED = {
    "JPEG-lossy.dcm": None,  # 12-bit JPEG Extended: GDCM's own codec (pydicom hands it only to a GPL plugin)
    "JPGExtended.dcm": None,
    "badVR.dcm": "NumberOfFrames is not a whole number",  # '1A': the frames the pixel data holds (15 doses)
}

ALL = sample_dicoms()


def _has_pixels(path) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return True  # unreadable header: must be a clean rejection below
    return "Rows" in ds


def test_sample_files_are_present():
    assert len(ALL) >= 80  # pydicom alone ships ~80; with pydicom-data ~150


@pytest.mark.parametrize("path", ALL, ids=[p.name for p in ALL])
def test_every_file_reads_or_is_rejected_clearly(path):
    if path.name in EXPECTED_REJECTS or not _has_pixels(path):
        with pytest.raises(ReadError) as ei:
            read(path)
        assert str(path) in str(ei.value)
        if path.name in EXPECTED_REJECTS:
            assert EXPECTED_REJECTS[path.name] in str(ei.value)
        return
    arr, meta = read(path)
    assert tuple(arr.shape) == meta.shape
    assert arr.size > 0
    if path.name in RECOVERED and RECOVERED[path.name]:
        assert any(RECOVERED[path.name] in w for w in meta.extra["warnings"])
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all()
    if meta.channels == 3:
        assert arr.shape[-1] == 3 and arr.dtype == np.uint8
    if meta.frames > 1:
        assert arr.shape[0] == meta.frames


def test_ct_small_in_hounsfield_units():
    p = dcm("CT_small.dcm")
    arr, meta = read(p)
    ds = pydicom.dcmread(p)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(arr, expected)
    assert meta.units == "HU" and meta.modality == "CT"
    assert arr.min() == pytest.approx(-896) and arr.max() == pytest.approx(1167)
    assert meta.spacing == pytest.approx((0.661468, 0.661468))


def test_monochrome1_is_inverted(pydicom_data):
    p = dcm("RG1_UNCI.dcm")
    arr, meta = read(p)
    ds = pydicom.dcmread(p)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and meta.inverted
    raw = ds.pixel_array.astype(np.float64)
    # Inversion over the stored range: brighter raw values come out darker.
    assert np.corrcoef(raw.ravel()[::97], arr.ravel()[::97])[0, 1] == pytest.approx(-1.0)
    hi = 2 ** int(ds.BitsStored) - 1
    np.testing.assert_allclose(arr, hi - raw)
    # The window is mirrored with the data.
    assert meta.window[0] == pytest.approx(hi - float(ds.WindowCenter))


def test_voi_window_applied_on_request():
    p = dcm("MR_small.dcm")
    plain, m0 = read(p)
    voi, m1 = read(p, apply_voi=True)
    assert m0.window is not None and m1.window is None
    assert not np.allclose(plain, voi)
    c, w = m0.window
    inside = (plain > c - w / 2 + 1) & (plain < c + w / 2 - 1)
    # Linear inside the window: order preserved.
    a, b = plain[inside], voi[inside]
    assert np.all(np.diff(b[np.argsort(a)]) >= -1e-6)


def test_multiframe_ultrasound(pydicom_data):
    two, m2 = read(dcm("OBXXXX1A_2frame.dcm"))
    assert m2.frames == 2 and two.shape[0] == 2 and m2.modality == "US"
    cine, m120 = read(dcm("color3d_jpeg_baseline.dcm"))
    assert m120.frames == 120 and cine.shape == (120, 480, 640, 3)


@pytest.mark.parametrize("name", ["SC_ybr_full_uncompressed.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm"])
def test_ybr_and_compressed_colour_come_out_rgb(name, pydicom_data):
    ref, _ = read(dcm("SC_rgb.dcm"))
    arr, meta = read(dcm(name))
    assert arr.shape == ref.shape == (100, 100, 3)
    # The reference is pure red/green/blue/... stripes: lossy YBR JPEG stays close.
    assert np.abs(arr.astype(int) - ref.astype(int)).mean() < 8


def test_palette_colour_to_rgb(pydicom_data):
    arr, meta = read(dcm("OT-PAL-8-face.dcm"))
    assert meta.photometric == "PALETTE COLOR" and arr.shape == (480, 640, 3) and arr.dtype == np.uint8
    assert arr.std() > 10  # a real picture, not a constant
    le, _ = read(dcm("OBXXXX1A.dcm"))
    be, _ = read(dcm("OBXXXX1A_expb.dcm"))
    assert le.max() > 200 and be.max() > 200  # 8-bit entries in a 16-bit LUT are not scaled to black


@pytest.mark.parametrize("variant", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm",
                                     "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                     "MR_small_expb.dcm"])
def test_transfer_syntaxes_decode_identically(variant):
    ref, _ = read(dcm("MR_small.dcm"))
    arr, meta = read(dcm(variant))
    np.testing.assert_array_equal(arr, ref)


def test_jpeg_baseline_and_lossless_decode(pydicom_data):
    arr, meta = read(dcm("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert "Lossless" in meta.transfer_syntax and arr.shape == (768, 1024)
    arr, meta = read(dcm("SC_rgb_jpeg_gdcm.dcm"))
    ref, _ = read(dcm("SC_rgb.dcm"))
    np.testing.assert_array_equal(arr, ref)


def test_enhanced_ct_per_frame_rescale(pydicom_data):
    arr, meta = read(dcm("eCT_Supplemental.dcm"))
    assert meta.frames == 2 and meta.units == "HU"
    assert arr.min() >= -1024 - 1e-3  # air, not raw stored values


def test_no_patient_identifiers_in_metadata(pydicom_data):
    for name in ["CT_small.dcm", "MR_small.dcm", "RG1_UNCI.dcm", "US1_UNCR.dcm", "examples_ybr_color.dcm"]:
        p = dcm(name)
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        _, meta = read(p)
        text = json.dumps(meta.to_dict())
        for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            value = str(ds.get(key, "") or "")
            if len(value) >= 3:
                assert value not in text, (name, key)
