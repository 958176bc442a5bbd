import numpy as np
import pytest
from PIL import Image

from medcls.errors import ReadError
from medcls.io import read
from medcls.io.npz import load_npz_splits


def test_png_grey_8_and_16_bit_keep_orientation(tmp_path):
    a8 = (np.arange(30 * 50) % 251).reshape(30, 50).astype(np.uint8)
    Image.fromarray(a8).save(tmp_path / "g8.png")
    arr, meta = read(tmp_path / "g8.png")
    np.testing.assert_array_equal(arr, a8)
    assert meta.format == "png" and meta.bits == 8 and arr.shape == (30, 50)
    a16 = (np.arange(30 * 50) * 37 % 65535).reshape(30, 50).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "g16.png")
    arr, meta = read(tmp_path / "g16.png")
    np.testing.assert_array_equal(arr, a16)
    assert meta.bits == 16


def test_colour_png_jpeg_tiff(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :20, 0] = 200
    rgb[:, 20:, 2] = 180
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 40), 255, np.uint8)])).save(tmp_path / "c_rgba.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "c.tif")
    for name, tol in [("c.png", 0), ("c_rgba.png", 0), ("c.tif", 0), ("c.jpg", 12)]:
        arr, meta = read(tmp_path / name)
        assert arr.shape == (20, 40, 3) and meta.channels == 3
        assert np.abs(arr.astype(int) - rgb).mean() <= tol


def test_tiff_16_bit(tmp_path):
    a = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "x.tiff")
    arr, meta = read(tmp_path / "x.tiff")
    np.testing.assert_array_equal(arr, a)


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"\x89PNG\r\n\x1a\n\x00\x00", "corrupt"),
                                             (b"hello world", "unsupported")])
def test_bad_raster_files(tmp_path, content, problem):
    p = tmp_path / "bad.png" if problem != "unsupported" else tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ReadError, match=problem) as ei:
        read(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("name,sizes", [
    ("pneumoniamnist", (4708, 524, 624)),
    ("breastmnist", (546, 78, 156)),
    ("adrenalmnist3d", (1188, 98, 298)),
])
def test_medmnist_official_split_sizes(medmnist_dir, name, sizes):
    splits = load_npz_splits(medmnist_dir / f"{name}.npz")
    assert tuple(len(splits[s][0]) for s in ("train", "val", "test")) == sizes
    arr, meta = read(medmnist_dir / f"{name}.npz")
    assert arr.shape[0] == sum(sizes) and meta.is_volume == name.endswith("3d")


def test_npz_without_medmnist_keys(tmp_path):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(ReadError, match="no MedMNIST arrays"):
        read(tmp_path / "x.npz")
