"""Real DICOM files that ship inside installed packages (never downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["pydicom_test_dir", "pydicom_data_dir", "sample_dicoms", "DEMO_FILES"]

# One file per modality family for the demo: CT (HU), MR, ultrasound (colour,
# multi-frame), CR chest X-ray (MONOCHROME1, from pydicom-data when installed).
DEMO_FILES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "examples_ybr_color.dcm", "RG1_UNCI.dcm")


def pydicom_test_dir() -> Path | None:
    spec = importlib.util.find_spec("pydicom")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "data" / "test_files"
    return d if d.is_dir() else None


def pydicom_data_dir() -> Path | None:
    """The ``pydicom-data`` package's files (it installs as ``data_store``)."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent / "data"
    return d if d.is_dir() else None


def sample_dicoms(names=None) -> list[Path]:
    """Paths of the named (default: all) ``.dcm`` files found in both packages."""
    dirs = [d for d in (pydicom_test_dir(), pydicom_data_dir()) if d is not None]
    files = sorted(p for d in dirs for p in d.glob("*.dcm"))
    if names is None:
        return files
    by_name = {p.name: p for p in files}
    return [by_name[n] for n in names if n in by_name]
