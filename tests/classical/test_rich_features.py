"""The classical path's multi-scale texture, thumbnail and 3-D shape features, and whole-volume classical runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from medcls.errors import MedclsError
from medcls.features import (DEFAULT_FEATURES, MultiScaleTexture, ShapeFeatures, Thumbnail, resolve_features,
                             takes_whole_volumes)
from medcls.features.shape import SHAPE_NAMES
from tests.conftest import medmnist_subset, run_cli


def _ellipsoid(n: int, axes, centre=None) -> np.ndarray:
    c = np.asarray(centre if centre is not None else [(n - 1) / 2] * 3, float)
    g = np.indices((n, n, n)).astype(float)
    r = sum(((g[i] - c[i]) / axes[i]) ** 2 for i in range(3))
    return (r <= 1.0).astype(np.uint8) * 255


def _named(f: np.ndarray) -> dict:
    return dict(zip(SHAPE_NAMES, f))


def test_shape_of_a_ball_and_of_an_ellipsoid_follow_their_definitions():
    ball = _named(ShapeFeatures().fit_transform(_ellipsoid(40, (12, 12, 12))[None, None])[0])
    assert ball["voxels"] == pytest.approx(4 / 3 * np.pi * 12 ** 3, rel=0.02)
    # marching cubes at 0.5 puts the surface half a voxel outside the last voxel centres inside
    assert ball["surface"] == pytest.approx(4 * np.pi * 12.5 ** 2, rel=0.02)
    assert 0.9 < ball["sphericity"] <= 1.02
    assert ball["elongation"] == pytest.approx(1.0, abs=0.01) and ball["flatness"] == pytest.approx(1.0, abs=0.01)
    assert ball["components"] == 1 and ball["euler_number"] == 1
    # a solid ellipsoid's variance along a semi-axis a is a^2 / 5, so pyradiomics' axis length 4 sqrt(lambda)
    # is 4 a / sqrt(5), elongation b / a and flatness c / a
    ell = _named(ShapeFeatures().fit_transform(_ellipsoid(48, (20, 10, 5))[None, None])[0])
    assert ell["axis_1"] == pytest.approx(4 * 20 / np.sqrt(5), rel=0.03)
    assert ell["elongation"] == pytest.approx(0.5, abs=0.02) and ell["flatness"] == pytest.approx(0.25, abs=0.02)
    assert ell["sphericity"] < ball["sphericity"] - 0.1
    # centred between voxels, the ellipsoid spans 2a voxels along each semi-axis a
    assert (ell["bbox_d"], ell["bbox_h"], ell["bbox_w"]) == (40, 20, 10)


def test_shape_counts_objects_describes_the_largest_and_survives_empty_volumes():
    two = np.maximum(_ellipsoid(32, (6, 6, 6), (8, 8, 8)), _ellipsoid(32, (3, 3, 3), (24, 24, 24)))
    f = ShapeFeatures().fit_transform(np.stack([two, np.zeros_like(two)])[:, None])
    big, empty = _named(f[0]), _named(f[1])
    assert big["components"] == 2
    assert big["voxels"] == pytest.approx((_ellipsoid(32, (6, 6, 6), (8, 8, 8)) > 0).sum())
    assert big["foreground_fraction"] == pytest.approx((two > 0).mean())
    assert all(v == 0 for v in empty.values()) and np.isfinite(f).all()


def test_shape_in_parallel_equals_serial(medmnist_dir):
    vols = np.load(medmnist_dir / "adrenalmnist3d.npz")["val_images"][:80, None]
    np.testing.assert_array_equal(ShapeFeatures(n_jobs=2).fit_transform(vols),
                                  ShapeFeatures(n_jobs=1).fit_transform(vols))


def test_texture_on_a_flat_image_and_against_scikit_image(medmnist_dir):
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    t = MultiScaleTexture()
    flat = t.fit_transform(np.full((1, 1, 28, 28), 100, np.uint8))[0]
    assert flat.shape == (t.n_features_out_,) == (10 + 18 + 26 + 6 * 3,)
    # each scale's LBP histogram is a distribution; inside a flat image every pixel has all neighbours
    # set (code P), and its co-occurrences have no contrast and all the energy
    for lo, p in ((0, 8), (10, 16), (28, 24)):
        assert flat[lo:lo + p + 2].sum() == pytest.approx(1.0) and flat[lo:lo + p + 2].argmax() == p
    np.testing.assert_allclose(flat[54:60], 0.0, atol=1e-7)  # contrast, dissimilarity at 3 distances
    np.testing.assert_allclose(flat[60:66], 1.0, rtol=1e-6)  # homogeneity, energy
    np.testing.assert_allclose(flat[69:72], 1.0, rtol=1e-6)  # angular second moment
    img = np.load(medmnist_dir / "breastmnist.npz")["test_images"][3]
    f = t.transform(img[None, None])[0]
    lbp = local_binary_pattern(img, 16, 2, method="uniform").astype(int)
    np.testing.assert_allclose(f[10:28], np.bincount(lbp.ravel(), minlength=18) / lbp.size, rtol=1e-6)
    q = (img.astype(np.uint16) * 16 // 256).astype(np.uint8)
    glcm = graycomatrix(q, [1, 2, 3], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=16, symmetric=True, normed=True)
    np.testing.assert_allclose(f[54:57], graycoprops(glcm, "contrast").mean(1), rtol=1e-5)  # first property
    x = np.load(medmnist_dir / "breastmnist.npz")["test_images"][:300]
    np.testing.assert_array_equal(MultiScaleTexture(n_jobs=2).fit_transform(x), MultiScaleTexture(n_jobs=1).fit_transform(x))


def test_thumbnail_is_the_block_means_of_images_and_volumes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 1, 28, 28), dtype=np.uint8)
    f = Thumbnail().fit_transform(img)
    np.testing.assert_allclose(f, (img[:, 0] / 255.0).reshape(3, 14, 2, 14, 2).mean((2, 4)).reshape(3, -1), rtol=1e-6)
    vol = rng.integers(0, 256, (2, 1, 28, 28, 28), dtype=np.uint8)
    g = Thumbnail().fit_transform(vol)
    assert g.shape == (2, 343)
    np.testing.assert_allclose(g, (vol[:, 0] / 255.0).reshape(2, 7, 4, 7, 4, 7, 4).mean((2, 4, 6)).reshape(2, -1),
                               rtol=1e-6)
    odd = rng.random((1, 30, 30)).astype(np.float32)  # 30 px over 14 cells: blocks of 2 and 3 px
    h = Thumbnail().fit_transform(odd).reshape(14, 14)
    edges = np.linspace(0, 30, 15).round().astype(int)
    assert h[5, 9] == pytest.approx(odd[0, edges[5]:edges[6], edges[9]:edges[10]].mean(), rel=1e-6)


def test_feature_specs_resolve_and_refuse_mixing_volume_and_slice_features():
    assert resolve_features("auto", False) == DEFAULT_FEATURES["image"]
    assert resolve_features("auto", True) == DEFAULT_FEATURES["volume"]
    assert takes_whole_volumes("shape+pixels") and not takes_whole_volumes("hog+pixels")
    with pytest.raises(MedclsError, match="describe whole volumes"):
        takes_whole_volumes("shape+hog")
    with pytest.raises(MedclsError, match="unknown features"):
        resolve_features("shape+gabor", True)


@pytest.fixture(scope="module")
def adrenal_subset(medmnist_dir, tmp_path_factory) -> Path:
    return medmnist_subset(medmnist_dir, "adrenalmnist3d", tmp_path_factory.mktemp("adrenal-classical"),
                           {"train": 60, "val": 20, "test": 20})


def test_classical_on_whole_volumes_through_the_cli(adrenal_subset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDCLS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    rc, out, err = run_cli(["classical", "--data", adrenal_subset, "--classifier", "forest", "--out", run], capsys)
    assert rc == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["features"] == DEFAULT_FEATURES["volume"] and cfg["data"]["volume_mode"] == "3d"
    assert cfg["preprocess"]["preparation"]["volume_mode"] == "3d"
    assert f"{DEFAULT_FEATURES['volume']} features ({len(SHAPE_NAMES) + 343} per image)" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["n"] == 20, "one result per volume"
    # the saved pipeline answers for a volume what the run reported for it
    from medcls.data import load_dataset
    from medcls.runs import load_run

    r = load_run(run)
    probs, y = r.sample_probs(load_dataset(adrenal_subset), "test")
    assert probs.shape == (20, 2) and len(y) == 20
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, probs[:, 1]) == pytest.approx(metrics["test"]["auc"])
    # a real NIfTI (nibabel's test volume) is prepared whole and gets one answer
    from nibabel.testing import data_path

    rc, out, err = run_cli(["predict", run, Path(data_path) / "anatomical.nii", "--json"], capsys)
    assert rc == 0, err
    rec = json.loads(out)[0]
    assert set(rec["probabilities"]) == {"normal", "hyperplasia"}
    assert sum(rec["probabilities"].values()) == pytest.approx(1.0) and "items" not in rec, "a volume is one item"
    # slice features on the same set still work: each volume is its slices, averaged
    rc, out, err = run_cli(["classical", "--data", adrenal_subset, "--features", "hog", "--classifier", "knn",
                            "--out", tmp_path / "slices", "--quick"], capsys)
    assert rc == 0, err
    assert json.loads((tmp_path / "slices" / "config.json").read_text())["data"]["volume_mode"] == "slices"
    assert json.loads((tmp_path / "slices" / "metrics.json").read_text())["test"]["n"] == 20
    # shape features need volumes
    rc, out, err = run_cli(["classical", "--data", "breastmnist", "--features", "shape", "--out", tmp_path / "bad"],
                           capsys)
    assert rc != 0 and "describe whole volumes" in (out + err)


def test_the_classifier_is_picked_on_the_mean_of_cross_validated_and_validation_auc():
    from medcls.classical import pick_classifier, selection_score

    table = [{"classifier": "knn", "cv_auc": 0.734, "val_auc": 0.964},  # a lucky 78-image validation split
             {"classifier": "svm", "cv_auc": 0.833, "val_auc": 0.910}]
    assert pick_classifier(table) == "svm"
    assert selection_score(table[0]) == pytest.approx((0.734 + 0.964) / 2)
    no_val = [{"classifier": "knn", "cv_auc": 0.80, "val_auc": float("nan")}, {"classifier": "svm", "cv_auc": 0.70}]
    assert pick_classifier(no_val) == "knn"  # without a validation split the cross-validated AUC decides
