import numpy as np
import pytest
from PIL import Image

from medcls.data import load_dataset, make_splits
from medcls.data.medmnist import find_medmnist
from medcls.errors import DataError
from medcls.modalities import Preparation
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def real_pngs(medmnist_dir, tmp_path_factory):
    """Real PneumoniaMNIST images written as PNG files, 24 per class."""
    z = np.load(medmnist_dir / "pneumoniamnist.npz")
    x, y = z["train_images"], z["train_labels"].ravel()
    root = tmp_path_factory.mktemp("pngs")
    files = []
    for cls, name in [(0, "normal"), (1, "pneumonia")]:
        idx = np.flatnonzero(y == cls)[:24]
        for i in idx:
            p = root / "all" / f"{name}_{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(p)
            files.append((p, name, x[i]))
    return root, files


def test_class_folder_dataset(real_pngs, tmp_path):
    _, files = real_pngs
    for p, name, _ in files:
        d = tmp_path / "ds" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / p.name).write_bytes(p.read_bytes())
    (tmp_path / "ds" / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    ds = load_dataset(tmp_path / "ds", prep=Preparation(size=28))
    assert ds.class_names == ["normal", "pneumonia"] and ds.task == "binary"
    assert ds.images.shape == (48, 1, 28, 28) and ds.images.dtype == np.uint8
    assert [p for p, _ in ds.skipped] == [str(tmp_path / "ds" / "normal" / "broken.png")]
    c = ds.counts()
    assert sum(v["total"] for v in c.values()) == 48 and set(c) == {"train", "val", "test"}
    for split in c.values():  # stratified: both classes in every split
        assert split["normal"] > 0 and split["pneumonia"] > 0
    # 8-bit PNGs come back unchanged through preparation at the native size.
    i = ds.paths.index(str(files[0][0]).replace(str(files[0][0].parent), str(tmp_path / "ds" / "normal")))
    np.testing.assert_array_equal(ds.images[i, 0], files[0][2])


def test_a_class_whose_files_are_all_unreadable_is_an_error_naming_it(real_pngs, tmp_path):
    _, files = real_pngs
    for p, _, _ in files[:6]:
        (tmp_path / "ds" / "normal").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / "normal" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "ds" / "tumour").mkdir()
    for i in range(3):
        (tmp_path / "ds" / "tumour" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match=r"class 'tumour' has no readable image: its 3 file\(s\) were all skipped "
                                        r"\(first: .*tumour/0.png: "):
        load_dataset(tmp_path / "ds", prep=Preparation(size=28))


def test_manifest_with_patients_never_splits_a_patient(real_pngs, tmp_path):
    _, files = real_pngs
    lines = ["path,label,patient_id"]
    for k, (p, name, _) in enumerate(files):
        lines.append(f"{p},{name},P{k // 3}")  # 3 images per patient
    (tmp_path / "m.csv").write_text("\n".join(lines))
    ds = load_dataset(tmp_path / "m.csv", prep=Preparation(size=28))
    assert len(ds.labels) == len(files)
    for pid in set(ds.patient_ids):
        assert len(set(ds.splits[ds.patient_ids == pid])) == 1


def test_manifest_split_column_and_relative_paths(real_pngs):
    root, files = real_pngs
    lines = ["file\tclass\tsplit"] + [f"all/{p.name}\t{n}\t{'test' if k % 4 == 0 else 'train'}"
                                      for k, (p, n, _) in enumerate(files)]
    (root / "m.tsv").write_text("\n".join(lines))
    ds = load_dataset(root / "m.tsv", prep=Preparation(size=16))
    assert ds.images.shape[2:] == (16, 16)
    assert (ds.splits == "test").sum() == 12 and set(ds.splits) == {"train", "test"}


def test_multilabel_manifests(real_pngs, tmp_path):
    _, files = real_pngs
    pipe = ["path,label"] + [f"{p},{'effusion|nodule' if k % 3 == 0 else ('nodule' if k % 3 == 1 else 'effusion')}"
                             for k, (p, _, _) in enumerate(files)]
    (tmp_path / "a.csv").write_text("\n".join(pipe))
    a = load_dataset(tmp_path / "a.csv", prep=Preparation(size=28))
    assert a.task == "multilabel" and a.class_names == ["effusion", "nodule"]
    assert a.labels.shape == (len(files), 2) and (a.labels.sum(1) == 2).sum() == len(files[::3])
    cols = ["path,effusion,nodule"] + [f"{p},{int(k % 3 != 1)},{int(k % 3 != 2)}" for k, (p, _, _) in enumerate(files)]
    (tmp_path / "b.csv").write_text("\n".join(cols))
    b = load_dataset(tmp_path / "b.csv", prep=Preparation(size=28))
    assert b.class_names == ["effusion", "nodule"]
    order_a = np.argsort(a.paths, kind="stable")
    order_b = np.argsort(b.paths, kind="stable")
    np.testing.assert_array_equal(a.labels[order_a], b.labels[order_b])


def test_manifest_naming_missing_files(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("path,label\nnope1.png,a\nnope2.png,b\n")
    with pytest.raises(DataError, match="2 listed file"):
        load_dataset(tmp_path / "m.csv")
    rc, out, err = run_cli(["data", tmp_path / "m.csv"], capsys)
    assert rc == 2 and "m.csv" in err and "nope1.png" in err and "Traceback" not in err


def test_make_splits_stratified_proportions():
    y = np.array([0] * 800 + [1] * 200)
    s = make_splits(y, seed=3)
    for name, frac in [("train", 0.7), ("val", 0.1), ("test", 0.2)]:
        m = s == name
        assert m.mean() == pytest.approx(frac, abs=0.03)
        assert y[m].mean() == pytest.approx(0.2, abs=0.03)


def test_medmnist_lookup(medmnist_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDCLS_DATA", str(medmnist_dir))
    assert find_medmnist("breastmnist", 28, download=False) == medmnist_dir / "breastmnist.npz"
    with pytest.raises(DataError, match="breastmnist_64.npz not found"):
        find_medmnist("breastmnist", 64, data_dir=tmp_path, download=False)
    with pytest.raises(DataError, match="sizes"):
        find_medmnist("adrenalmnist3d", 224, download=False)
    ds = load_dataset("breastmnist", data_dir=medmnist_dir)
    assert ds.modality == "US" and ds.counts()["test"]["total"] == 156


def test_3d_medmnist_keeps_volumes(medmnist_dir):
    ds = load_dataset(medmnist_dir / "adrenalmnist3d.npz")
    assert ds.is_volume and ds.images.shape[1:] == (28, 28, 28) and ds.class_names == ["normal", "hyperplasia"]
