"""Read files into ``(array, meta)``: DICOM, DICOM series, NIfTI, PNG/JPEG/TIFF, npz.

One entry point, :func:`read`, chooses the reader by content and suffix. Readers
only read: windowing, normalisation and resizing live in :mod:`medcls.modalities`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.meta import ImageMeta

__all__ = ["read", "ImageMeta", "detect_format", "iter_image_files", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".dcm", ".dicom", ".nii", ".gz", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npz", ".ima"}


def detect_format(path: str | Path) -> str:
    """Name the reader for a path: dicom (dicom-raw without preamble), dicom-series, nifti, raster or npz.

    Raises:
        ReadError: missing, empty or unsupported file.
    """
    from medcls.io.dicom import is_dicom
    from medcls.io.raster import RASTER_SUFFIXES

    p = Path(path)
    if p.is_dir():
        return "dicom-series"
    if not p.exists():
        raise ReadError(p, "no such file or folder")
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise ReadError(p, f"cannot open ({exc.strerror or exc})") from exc
    if size == 0:
        raise ReadError(p, "file is empty")
    name = p.name.lower()
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".npz"):
        return "npz"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")):
        return "raster"
    if p.suffix.lower() in RASTER_SUFFIXES:
        return "raster"
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00"):
        return "nifti"
    if p.suffix.lower() in (".dcm", ".dicom", ".ima", "") and is_dicom_without_preamble(p):
        return "dicom-raw"  # no 128-byte preamble / DICM marker: parse with force
    raise ReadError(p, "unsupported file type (expected DICOM, NIfTI, PNG/JPEG/TIFF or MedMNIST .npz)")


def is_dicom_without_preamble(path: Path) -> bool:
    """Old files without the 128-byte preamble: let pydicom try with force."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return len(ds) > 0 and ("SOPClassUID" in ds or "Rows" in ds)


def read(path: str | Path, *, apply_voi: bool = False, series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read an image file or DICOM series folder.

    Args:
        path: a DICOM file, a folder of DICOM slices, ``.nii``/``.nii.gz``,
            PNG/JPEG/TIFF/BMP, or a MedMNIST ``.npz``.
        apply_voi: DICOM only: apply the file's VOI LUT / window too.
        series_uid: DICOM folders only: which series, if there are several.

    Returns:
        ``(array, meta)``. Grey 2-D ``(H, W)``; colour ``(H, W, 3)`` RGB; frames
        first for multi-frame files ``(F, H, W[, 3])``; volumes ``(Z, Y, X)``.
        DICOM monochrome values are after the modality LUT (HU for CT) and
        MONOCHROME1 is inverted. ``meta`` never holds patient identifiers.

    Raises:
        ReadError: the file is missing, empty, truncated, corrupt or unsupported;
            the message names the file and the problem.
    """
    fmt = detect_format(path)
    if fmt in ("dicom", "dicom-raw"):
        from medcls.io.dicom import read_dicom

        return read_dicom(path, apply_voi=apply_voi, force=fmt == "dicom-raw")
    if fmt == "dicom-series":
        from medcls.io.series import read_series

        return read_series(path, series_uid=series_uid)
    if fmt == "nifti":
        from medcls.io.nifti import read_nifti

        return read_nifti(path)
    if fmt == "npz":
        from medcls.io.npz import read_npz

        return read_npz(path)
    from medcls.io.raster import read_raster

    return read_raster(path)


def iter_image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image-like files under ``folder`` (by suffix, plus suffix-less files), sorted."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    out = []
    for p in it:
        if not p.is_file() or p.name.startswith("."):
            continue
        suf = p.suffix.lower()
        if suf in IMAGE_SUFFIXES or suf == "" or p.name.lower().endswith(".nii.gz"):
            out.append(p)
    return sorted(out)
