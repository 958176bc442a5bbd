"""Read files into ``(array, meta)``: DICOM, DICOM series, NIfTI, PNG/JPEG/TIFF, npz.

One entry point, :func:`read`, chooses the reader by content and suffix. Readers
only read: windowing, normalisation and resizing live in :mod:`medcls.modalities`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcls.errors import ReadError, UnsupportedFileError
from medcls.io.limits import check_pixels, max_pixels, not_regular_reason, pixel_limit, require_regular_file
from medcls.io.meta import ImageMeta

__all__ = ["read", "ImageMeta", "detect_format", "iter_image_files", "list_image_files", "IMAGE_SUFFIXES",
           "max_pixels", "pixel_limit", "check_pixels", "require_regular_file", "check_values", "collect_inputs",
           "iter_inputs"]

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
    require_regular_file(p)  # a FIFO would block the open below for ever
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
    raise UnsupportedFileError(p, "unsupported file type (expected DICOM, NIfTI, PNG/JPEG/TIFF or MedMNIST .npz)")


def is_dicom_without_preamble(path: Path) -> bool:
    """Old files without the 128-byte preamble: let pydicom try with force."""
    from medcls.io.dicom import read_header

    try:
        ds = read_header(path, force=True)
    except ReadError:
        return False
    return len(ds) > 0 and ("SOPClassUID" in ds or "Rows" in ds)


def read(path: str | Path, *, apply_voi: bool = False, series_uid: str | None = None,
         allow_gaps: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read an image file or DICOM series folder.

    Args:
        path: a DICOM file, a folder of DICOM slices, ``.nii``/``.nii.gz``,
            PNG/JPEG/TIFF/BMP, or a MedMNIST ``.npz``.
        apply_voi: DICOM only: apply the file's VOI LUT / window too.
        series_uid: DICOM folders only: which series, if there are several.
        allow_gaps: DICOM folders only: return a volume with missing or unreadable
            slices instead of refusing it (``meta.extra["gaps"]`` says where).

    Returns:
        ``(array, meta)``. Grey 2-D ``(H, W)``; colour ``(H, W, 3)`` RGB; frames
        first for multi-frame files ``(F, H, W[, 3])``; volumes ``(Z, Y, X)``.
        DICOM monochrome values are after the modality LUT (HU for CT) and
        MONOCHROME1 is inverted. ``meta`` never holds patient identifiers.

    Raises:
        ReadError: the file is missing, empty, truncated, corrupt, unsupported,
            not a regular file, or larger than the pixel budget
            (:func:`medcls.io.limits.max_pixels`); the message names the file and
            the problem.
    """
    fmt = detect_format(path)
    if fmt in ("dicom", "dicom-raw"):
        from medcls.io.dicom import read_dicom

        return read_dicom(path, apply_voi=apply_voi, force=fmt == "dicom-raw")
    if fmt == "dicom-series":
        from medcls.io.series import read_series

        return read_series(path, series_uid=series_uid, allow_gaps=allow_gaps)
    if fmt == "nifti":
        from medcls.io.nifti import read_nifti

        return read_nifti(path)
    if fmt == "npz":
        from medcls.io.npz import read_npz

        return read_npz(path)
    from medcls.io.raster import read_raster

    return read_raster(path)


def _is_image_name(p: Path) -> bool:
    suf = p.suffix.lower()
    return suf in IMAGE_SUFFIXES or suf == "" or p.name.lower().endswith(".nii.gz")


def _walk_image_dirs(folder: str | Path, recursive: bool = True):
    """Per folder under ``folder`` (sorted, top down): ``(folder, its image-like files, what it left out)``.

    Symbolic links are followed, but a folder reached twice (a link loop) is
    listed once; FIFOs, devices and sockets are never opened. Hidden files and
    folders are ignored. One folder's names are in memory at a time.
    """
    import os

    seen: set[tuple[int, int]] = set()
    errors: list[tuple[str, str]] = []
    for here, dirs, names in os.walk(Path(folder), followlinks=True, onerror=lambda e: errors.append(
            (str(e.filename), f"cannot list folder ({e.strerror or e})"))):
        skipped, errors[:] = list(errors), []
        st = os.stat(here)
        if (st.st_dev, st.st_ino) in seen:
            skipped.append((here, "a folder already listed (symbolic link loop)"))
            dirs[:] = []
            yield Path(here), [], skipped
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        files: list[Path] = []
        for name in sorted(names):
            p = Path(here) / name
            if name.startswith("."):
                continue
            why = not_regular_reason(p)
            if why is not None:
                skipped.append((str(p), why))
            elif _is_image_name(p):
                files.append(p)
            else:
                skipped.append((str(p), f"not an image file (suffix {p.suffix})"))
        yield Path(here), files, skipped
    if errors:
        yield Path(folder), [], errors


def list_image_files(folder: str | Path, recursive: bool = True) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image-like files under ``folder`` (by suffix, plus suffix-less files), sorted, and what was left out.

    Symbolic links are followed, but a folder reached twice (a link loop) is
    listed once; FIFOs, devices and sockets are never opened. Hidden files are
    ignored; anything else left out is returned with its reason.
    """
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for _, f, s in _walk_image_dirs(folder, recursive):
        files += f
        skipped += s
    return sorted(files), skipped


def iter_inputs(paths):
    """:func:`collect_inputs` as a stream: ``(target, None)`` or ``(None, (path, why))``, folder by folder.

    Only one folder's listing is held at a time, so a folder tree of millions
    of files can be predicted on (``medcls predict --out``).
    """
    from medcls.io.series import scan_series

    for p in map(Path, paths):
        if not p.is_dir():
            yield p, None
            continue
        for d, files, left_out in _walk_image_dirs(p, recursive=True):
            for s in left_out:
                yield None, s
            if not files:
                continue
            listed = {str(f) for f in files}
            scan = scan_series(d)
            multi = [(uid, s) for uid, s in scan.series.items() if len(s.files) > 1]
            for uid, s in scan.series.items():
                if len(s.files) == 1:
                    yield s.files[0], None
                else:
                    yield (d if len(multi) == 1 else (d, uid)), None
            for f, why in scan.skipped:
                if f not in listed:
                    continue  # a hidden file, or one already listed as left out
                if why == "not a DICOM file":
                    yield Path(f), None  # another kind of image: its own reader decides
                else:
                    yield None, (f, why)


def collect_inputs(paths) -> tuple[list, list[tuple[str, str]]]:
    """What there is to predict on among the files and folders a user named, and what was left out, with why.

    A file is itself. A folder (and each sub-folder) gives each DICOM series it
    holds — the folder itself when it holds one series of several slices, a
    ``(folder, series_uid)`` pair each when it holds several, the file for a
    single-file series (a folder of radiographs) — and each other image file
    (PNG, NIfTI, ...) in it.
    """
    targets: list = []
    skipped: list[tuple[str, str]] = []
    for target, left_out in iter_inputs(paths):
        if target is not None:
            targets.append(target)
        else:
            skipped.append(left_out)
    return targets, skipped


def iter_image_files(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image-like files under ``folder`` (see :func:`list_image_files`, whose skipped list this drops)."""
    return list_image_files(folder, recursive)[0]


def check_values(arr: np.ndarray, meta: ImageMeta, allow_nonfinite: bool = False) -> np.ndarray:
    """Refuse pixel data no classifier should see: non-finite values (NaN, inf) or one constant value.

    Args:
        allow_nonfinite: replace NaN and inf by the finite minimum (maximum for +inf)
            and note it in ``meta.extra["warnings"]`` instead of refusing.

    Raises:
        ReadError: the values are garbage; the message says which kind.
    """
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            finite = arr[~bad]
            share = f"{bad.mean():.0%}" if bad.mean() >= 0.01 else f"{int(bad.sum())}"
            if not allow_nonfinite or finite.size == 0:
                more = "" if finite.size == 0 else " (--allow-nonfinite replaces them)"
                raise ReadError(meta.path, f"{share} of its pixel values are not finite (NaN or infinite) after the "
                                           f"modality rescale; refusing to classify it{more}")
            arr = np.nan_to_num(arr, nan=float(finite.min()), posinf=float(finite.max()), neginf=float(finite.min()))
            meta.extra.setdefault("warnings", []).append(f"{share} non-finite pixel values replaced")
    if arr.size and arr.min() == arr.max():
        raise ReadError(meta.path, "every pixel has the same value: no image to classify")
    return arr
