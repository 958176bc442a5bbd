"""A folder of DICOM slices -> one volume sorted along the slice normal."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.meta import ImageMeta

__all__ = ["SeriesInfo", "scan_series", "read_series"]


@dataclass
class SeriesInfo:
    """The DICOM files of one series in a folder (a header scan, no pixels)."""

    uid: str
    modality: str
    files: list[Path] = field(default_factory=list)
    description: str = ""


@dataclass
class _Scan:
    series: dict[str, SeriesInfo]
    skipped: list[tuple[str, str]]  # (path, reason)


def scan_series(folder: str | Path) -> _Scan:
    """Group the DICOM files of ``folder`` (not recursive) by Series Instance UID.

    Files that are not DICOM, or carry no pixel data, are listed in ``skipped``.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise ReadError(folder, f"cannot list folder ({exc.strerror or exc})") from exc
    series: dict[str, SeriesInfo] = {}
    skipped: list[tuple[str, str]] = []
    for p in entries:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=None)
        except InvalidDicomError:
            skipped.append((str(p), "not a DICOM file"))
            continue
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
            skipped.append((str(p), f"unreadable DICOM header ({type(exc).__name__})"))
            continue
        if "Rows" not in ds or "Columns" not in ds:
            skipped.append((str(p), "DICOM without an image"))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "unknown")
        info = series.setdefault(uid, SeriesInfo(uid, str(ds.get("Modality", "OT") or "OT").upper(),
                                                 description=str(ds.get("SeriesDescription", "") or "")))
        info.files.append(p)
    return _Scan(series, skipped)


def _axis_code(v: np.ndarray) -> str:
    i = int(np.argmax(np.abs(v)))
    return ("L", "P", "S")[i] if v[i] > 0 else ("R", "A", "I")[i]


def read_series(folder: str | Path, series_uid: str | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read one DICOM series from a folder as a ``(Z, Y, X)`` float32 volume.

    Slices are sorted by their position along the slice normal (from Image
    Orientation/Position Patient), falling back to Instance Number. Spacing is
    (slice step, row spacing, column spacing) in mm.

    Args:
        folder: a folder of single-frame DICOM slices.
        series_uid: which series, when the folder holds several.

    Raises:
        ReadError: no DICOM images, several series and none chosen, or slices of
            different sizes.
    """
    import pydicom

    from medcls.io.dicom import read_dicom

    folder = Path(folder)
    scan = scan_series(folder)
    if not scan.series:
        raise ReadError(folder, "no DICOM images in this folder")
    if series_uid is None:
        if len(scan.series) > 1:
            listing = ", ".join(f"{s.uid} ({len(s.files)} files)" for s in scan.series.values())
            raise ReadError(folder, f"holds {len(scan.series)} DICOM series; choose one with series_uid: {listing}")
        series_uid = next(iter(scan.series))
    if series_uid not in scan.series:
        raise ReadError(folder, f"no series with UID {series_uid}")
    info = scan.series[series_uid]

    headers = [(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in info.files]
    iop = headers[0][1].get("ImageOrientationPatient")
    normal = None
    if iop is not None and len(iop) == 6:
        r, c = np.array(iop[:3], float), np.array(iop[3:], float)
        normal = np.cross(r, c)

    def key(item):
        p, ds = item
        ipp = ds.get("ImagePositionPatient")
        if normal is not None and ipp is not None and len(ipp) == 3:
            return (0, float(np.dot(normal, np.array(ipp, float))), int(ds.get("InstanceNumber", 0) or 0))
        return (1, float(ds.get("SliceLocation", 0) or 0), int(ds.get("InstanceNumber", 0) or 0))

    headers.sort(key=key)
    slices, metas, skipped = [], [], list(scan.skipped)
    for p, _ in headers:
        try:
            a, m = read_dicom(p)
        except ReadError as exc:
            skipped.append((str(p), exc.problem))
            continue
        if m.frames != 1 or m.channels != 1:
            skipped.append((str(p), "multi-frame or colour file inside a slice series"))
            continue
        slices.append(a)
        metas.append(m)
    if not slices:
        raise ReadError(folder, "no readable slices in the series")
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ReadError(folder, f"slices of different sizes in one series: {sorted(shapes)}")
    vol = np.stack(slices)

    positions = [key(h)[1] for h in headers if key(h)[0] == 0]
    dz = None
    if len(positions) >= 2:
        steps = np.diff(sorted(positions))
        steps = steps[steps > 1e-6]
        dz = float(np.median(steps)) if len(steps) else None
    if dz is None:
        st = headers[0][1].get("SpacingBetweenSlices") or headers[0][1].get("SliceThickness")
        dz = float(st) if st else 1.0
    sp2 = metas[0].spacing or (1.0, 1.0)
    orient = None
    if normal is not None:
        orient = _axis_code(normal) + _axis_code(c) + _axis_code(r)  # type: ignore[possibly-undefined]
    m0 = metas[0]
    meta = ImageMeta(
        path=str(folder),
        format="dicom-series",
        modality=info.modality,
        shape=tuple(vol.shape),
        frames=1,
        spacing=(dz, float(sp2[0]), float(sp2[1])),
        photometric=m0.photometric,
        bits=m0.bits,
        window=m0.window,
        inverted=m0.inverted,
        rescaled=m0.rescaled,
        units=m0.units,
        orientation=orient,
        transfer_syntax=m0.transfer_syntax,
        is_volume=True,
        extra={"slices": len(slices), "skipped": skipped, "description": info.description},
    )
    return vol, meta
