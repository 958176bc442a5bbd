import json

import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone

from medcls.classical import CLASSIFIERS, load_pipeline, save_pipeline
from medcls.errors import MedclsError
from medcls.features import HOGFeatures, IntensityTexture, SIFTBoVW, make_features
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def breast(medmnist_dir):
    z = np.load(medmnist_dir / "breastmnist.npz")
    return z["train_images"][:120], z["test_images"][:40]


@pytest.mark.parametrize("make,dim", [
    (lambda: HOGFeatures(), 324),  # 28 px: 4 x 4 cells of 7 px, 3 x 3 blocks of 2 x 2 cells, 9 bins
    (lambda: SIFTBoVW(n_words=16, pyramid=1), 16 * 5),
    (lambda: IntensityTexture(), 39),
])
def test_feature_shapes_and_determinism(make, dim, breast):
    train, test = breast
    a = make().fit(train)
    fa = a.transform(test)
    fb = make().fit(train).transform(test)
    assert fa.shape == (len(test), dim) and np.isfinite(fa).all()
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(fa, a.transform(test))  # transform has no state of its own
    assert clone(a).get_params() == a.get_params()


def test_hog_parallel_equals_serial(breast):
    train, _ = breast
    x = np.concatenate([train] * 3)  # >= 256 images: the parallel path
    np.testing.assert_array_equal(HOGFeatures(n_jobs=2).fit(x).transform(x), HOGFeatures(n_jobs=1).fit(x).transform(x))


def test_sift_is_dense_at_28px_and_codebook_sees_only_training_images(breast):
    train, test = breast
    s = SIFTBoVW(n_words=16).fit(train)
    assert s._params(train.shape[1:])[0] is True  # dense grid at 28 px
    centres = s.codebook_.cluster_centers_.copy()
    s.transform(test)
    np.testing.assert_array_equal(s.codebook_.cluster_centers_, centres)  # transform never refits
    leaky = SIFTBoVW(n_words=16).fit(np.concatenate([train, test]))
    assert not np.allclose(leaky.codebook_.cluster_centers_, centres)  # so the check above can fail


def test_unknown_features_and_classifier():
    with pytest.raises(MedclsError, match="unknown features"):
        make_features("hog+gabor")
    from medcls.classical import make_classifier

    with pytest.raises(MedclsError, match="unknown classifier"):
        make_classifier("xgboost")


def test_classical_all_cli_and_saved_pipeline(medmnist_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDCLS_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    rc, out, err = run_cli(["classical", "--data", "breastmnist", "--data-dir", medmnist_dir, "--features",
                            "hog+sift", "--classifier", "all", "--out", run, "--quick"], capsys)
    assert rc == 0, err
    table = json.loads((run / "comparison.json").read_text())
    assert [r["classifier"] for r in table] == list(CLASSIFIERS)
    for name in CLASSIFIERS:  # five rows in the printed table
        assert sum(line.strip().startswith(("│ " + name, "| " + name)) for line in out.splitlines()) == 1
    assert "extracted hog+sift features" in out
    for f in ("config.json", "model.skops", "metrics.json", "roc.png", "confusion.png", "report.html"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "config.json").read_text())
    chosen = meta["classifier"]
    assert m["test"]["auc"] == pytest.approx(next(r["test_auc"] for r in table if r["classifier"] == chosen))
    # The saved pipeline loads back safely and predicts what the run reported.
    from medcls.data import load_dataset
    from medcls.runs import load_run

    r = load_run(run)
    ds = load_dataset(medmnist_dir / "breastmnist.npz")
    probs, y = r.sample_probs(ds, "test")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, probs[:, 1]) == pytest.approx(m["test"]["auc"])
    # A second run with another classifier reuses the cached features.
    rc, out, _ = run_cli(["classical", "--data", "breastmnist", "--data-dir", medmnist_dir, "--features", "hog+sift",
                          "--classifier", "knn", "--out", tmp_path / "knn", "--quick"], capsys)
    assert rc == 0 and "features from cache" in out
    # predict works on a classical run
    x, _ = ds.split("test")
    Image.fromarray(x[0, 0]).save(tmp_path / "t.png")
    rc, out, _ = run_cli(["predict", run, tmp_path / "t.png", "--json"], capsys)
    rec = json.loads(out)[0]
    assert rc == 0 and rec["probabilities"]["malignant"] == pytest.approx(probs[0, 0], abs=1e-6)


def test_untrusted_types_are_refused(tmp_path):
    import os

    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    evil = Pipeline([("f", FunctionTransformer(os.system))])
    save_pipeline(evil, tmp_path / "evil.skops")
    with pytest.raises(MedclsError, match="untrusted"):
        load_pipeline(tmp_path / "evil.skops")
