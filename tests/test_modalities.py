import numpy as np
import pytest

from medcls import modalities as M
from medcls.io import read
from tests.conftest import dcm


def test_window_formula():
    x = np.array([-1000, -160, 40, 240, 1000], np.float32)
    out = M.window(x, 40, 400)
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1])


def test_ct_named_windows_as_channels():
    hu, _ = read(dcm("CT_small.dcm"))
    out = M.ct_windows(hu, ("lung", "mediastinum", "bone"))
    assert out.shape == (3, *hu.shape) and out.min() >= 0 and out.max() <= 1
    # Lung window shows air detail; bone window saturates less on bright voxels.
    assert not np.allclose(out[0], out[2])
    c, w = M.HU_WINDOWS["mediastinum"]
    np.testing.assert_allclose(out[1], np.clip((hu - (c - w / 2)) / w, 0, 1), atol=1e-6)
    with pytest.raises(Exception, match="unknown CT window"):
        M.ct_windows(hu, ("liverish",))


def test_percentile_window_and_clahe():
    rng = np.random.default_rng(0)
    x = rng.normal(1000, 200, (64, 64)).astype(np.float32)
    x[0, 0] = 1e6  # an outlier must not squash the image
    y = M.percentile_window(x, 1, 99)
    assert y.min() == 0 and y.max() == 1 and np.median(y) == pytest.approx(0.5, abs=0.1)
    z = M.clahe(y)
    assert z.shape == y.shape and 0 <= z.min() and z.max() <= 1


def test_mri_normalisation_within_body():
    x = np.zeros((64, 64), np.float32)
    x[16:48, 16:48] = np.random.default_rng(1).normal(500, 50, (32, 32))
    z = M.zscore_in_body(x)
    body = M.body_mask(x)
    assert body[20:44, 20:44].all() and not body[:8].any()
    assert z[body].mean() == pytest.approx(0, abs=1e-3) and z[body].std() == pytest.approx(1, abs=1e-2)
    p = M.percentile_in_body(x)
    assert p[:8].max() == 0 and p[body].max() == 1


def test_stack_sequences_as_channels():
    a, b = np.ones((8, 8)), np.zeros((8, 8))
    assert M.stack_channels([a, b]).shape == (2, 8, 8)
    with pytest.raises(Exception, match="share one shape"):
        M.stack_channels([a, np.zeros((4, 4))])


def test_slices_and_25d():
    vol = np.arange(5)[:, None, None] * np.ones((5, 3, 4))
    s = M.volume_slices(vol, axis=2)
    assert s.shape == (4, 5, 3)
    st = M.slices_25d(vol, axis=0, k=1)
    assert st.shape == (5, 3, 3, 4)
    np.testing.assert_array_equal(st[2, :, 0, 0], [1, 2, 3])
    np.testing.assert_array_equal(st[0, :, 0, 0], [0, 0, 1])  # edge repeats


def test_crop_to_content_drops_border_and_text():
    img = np.zeros((100, 120), np.float32)
    img[20:80, 30:100] = 0.6  # scan sector
    img[2:6, 2:20] = 1.0  # burnt-in text
    out = M.crop_to_content(img)
    assert out.shape[0] <= 64 and out.shape[1] <= 74 and out.mean() > 0.5


def test_resize_keeps_orientation():
    img = np.zeros((40, 80), np.float32)
    img[:, :40] = 1
    out = M.resize(img, 20)
    assert out.shape == (20, 20) and out[:, :8].mean() > 0.9 and out[:, 12:].mean() < 0.1


def test_prepare_by_modality(pydicom_data):
    prep = M.Preparation(size=32, channels=3, ct_windows=("lung", "mediastinum", "bone"))
    hu, m = read(dcm("CT_small.dcm"))
    assert M.prepare(hu, m, prep).shape == (1, 3, 32, 32)
    us, m = read(dcm("color3d_jpeg_baseline.dcm"))
    x = M.prepare(us[:3], type(m)(**{**m.__dict__, "frames": 3}), M.Preparation(size=32, channels=1, crop=True))
    assert x.shape == (3, 1, 32, 32)
    cr, m = read(dcm("RG1_UNCI.dcm"))
    x = M.prepare(cr, m, M.Preparation(size=64, clahe=True))
    assert x.shape == (1, 1, 64, 64) and 0 <= x.min() and x.max() <= 1
    d = prep.to_dict()
    assert M.Preparation.from_dict(d) == prep


@pytest.mark.parametrize("mode,channels", [("2.5d", 3), ("slices", 1)])
def test_prepare_4d_time_series_gives_every_slice_of_every_time_point(mode, channels):
    """nibabel's example4d.nii.gz (fMRI: 2 time points x 24 slices) is items, not a crash in resize."""
    from pathlib import Path

    import nibabel as nib

    arr, meta = read(Path(nib.__file__).parent / "tests" / "data" / "example4d.nii.gz")
    prep = M.Preparation(size=28, channels=channels, volume_mode=mode)
    x = M.prepare(arr, meta, prep)
    assert arr.ndim == 4 and x.shape == (2 * 24, channels, 28, 28)
    for t in range(2):  # time point by time point, each prepared as the 3-D volume it is
        np.testing.assert_array_equal(x[24 * t:24 * (t + 1)], M.prepare(arr[t], meta, prep))
    assert not np.array_equal(x[:24], x[24:])
