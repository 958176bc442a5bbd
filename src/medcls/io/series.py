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
    """The DICOM files of one series in a folder (a header scan, no pixels; no free text kept)."""

    uid: str
    modality: str
    files: list[Path] = field(default_factory=list)


@dataclass
class _Scan:
    series: dict[str, SeriesInfo]
    skipped: list[tuple[str, str]]  # (path, reason)


def scan_series(folder: str | Path) -> _Scan:
    """Group the DICOM files of ``folder`` (not recursive) by Series Instance UID.

    Files that are not DICOM, or carry no pixel data, are listed in ``skipped``.
    """
    from medcls.io.dicom import read_header
    from medcls.io.limits import not_regular_reason

    folder = Path(folder)
    try:
        entries = sorted(p for p in folder.iterdir() if not p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise ReadError(folder, f"cannot list folder ({exc.strerror or exc})") from exc
    series: dict[str, SeriesInfo] = {}
    skipped: list[tuple[str, str]] = []
    for p in entries:
        why = not_regular_reason(p)
        if why is not None:
            skipped.append((str(p), why))
            continue
        try:
            ds = read_header(p)
        except ReadError as exc:
            skipped.append((str(p), exc.problem))
            continue
        if "Rows" not in ds or "Columns" not in ds:
            skipped.append((str(p), "DICOM without an image"))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "unknown")
        info = series.setdefault(uid, SeriesInfo(uid, str(ds.get("Modality", "OT") or "OT").upper()))
        info.files.append(p)
    return _Scan(series, skipped)


def _axis_code(v: np.ndarray) -> str:
    i = int(np.argmax(np.abs(v)))
    return ("L", "P", "S")[i] if v[i] > 0 else ("R", "A", "I")[i]


def read_series(folder: str | Path, series_uid: str | None = None,
                allow_gaps: bool = False) -> tuple[np.ndarray, ImageMeta]:
    """Read one DICOM series from a folder as a ``(Z, Y, X)`` float32 volume.

    Slices are sorted by their position along the slice normal (from Image
    Orientation/Position Patient), falling back to Instance Number. Spacing is
    (slice step, row spacing, column spacing) in mm.

    A volume with a slice missing — an unreadable slice file, or a step between
    positions more than 1.5 times the usual one — is not the anatomy it claims
    to be: it is refused unless ``allow_gaps``; either way ``meta.extra["gaps"]``
    describes each gap and ``meta.extra["skipped"]`` lists unreadable files.

    Args:
        folder: a folder of single-frame DICOM slices.
        series_uid: which series, when the folder holds several.
        allow_gaps: return a volume with gaps instead of refusing it.

    Raises:
        ReadError: no DICOM images, several series and none chosen, slices of
            different sizes, gaps (unless allowed), or over the pixel budget.
    """
    from medcls.io.dicom import read_dicom, read_header
    from medcls.io.limits import check_pixels

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

    headers = [(p, read_header(p)) for p in info.files]
    h0 = headers[0][1]
    check_pixels(folder, len(headers) * int(h0.get("Rows", 0) or 0) * int(h0.get("Columns", 0) or 0),
                 f"its series of {len(headers)} slices")
    iop = headers[0][1].get("ImageOrientationPatient")
    normal = None
    try:
        if iop is not None and len(iop) == 6:
            r, c = np.array(iop[:3], float), np.array(iop[3:], float)
            normal = np.cross(r, c)
    except (TypeError, ValueError):
        normal = None

    def number(ds, name: str) -> float:
        try:
            return float(ds.get(name, 0) or 0)
        except (TypeError, ValueError):
            return 0.0

    def key(item):
        p, ds = item
        ipp = ds.get("ImagePositionPatient")
        try:
            if normal is not None and ipp is not None and len(ipp) == 3:
                return (0, float(np.dot(normal, np.array(ipp, float))), number(ds, "InstanceNumber"))
        except (TypeError, ValueError):
            pass
        return (1, number(ds, "SliceLocation"), number(ds, "InstanceNumber"))

    headers.sort(key=key)
    slices, metas, skipped, lost = [], [], list(scan.skipped), []
    for p, _ in headers:
        try:
            a, m = read_dicom(p)
        except ReadError as exc:
            skipped.append((str(p), exc.problem))
            lost.append(p)
            continue
        if m.frames != 1 or m.channels != 1:
            skipped.append((str(p), "multi-frame or colour file inside a slice series"))
            lost.append(p)
            continue
        slices.append(a)
        metas.append(m)
    if not slices:
        raise ReadError(folder, "no readable slices in the series")
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise ReadError(folder, f"slices of different sizes in one series: {sorted(shapes)}")
    vol = np.stack(slices)

    positions = [key(h)[1] for h in headers if key(h)[0] == 0 and h[0] not in lost]
    dz = None
    unreadable = lost + [p for p, why in scan.skipped if why != "not a DICOM file"]
    gaps = [f"{len(unreadable)} file(s) of the series could not be read"] if unreadable else []
    if len(positions) >= 2:
        steps = np.diff(sorted(positions))
        steps = steps[steps > 1e-6]
        dz = float(np.median(steps)) if len(steps) else None
        if dz:
            wide = steps[steps > 1.5 * dz]
            gaps += [f"{len(wide)} gap(s) between slice positions (up to {wide.max():.3g} mm where the usual step "
                     f"is {dz:.3g} mm)"] if len(wide) else []
    if gaps and not allow_gaps:
        raise ReadError(folder, f"the series has missing slices: {'; '.join(gaps)}; a volume with a hole is not the "
                                "anatomy it claims to be (--allow-gaps predicts on it anyway)")
    if dz is None:
        st = headers[0][1].get("SpacingBetweenSlices") or headers[0][1].get("SliceThickness")
        try:
            dz = float(st) if st else 1.0
        except (TypeError, ValueError):
            dz = 1.0
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
        extra={"slices": len(slices), "skipped": skipped, "gaps": gaps,
               **({"warnings": m0.extra["warnings"]} if m0.extra.get("warnings") else {}),
               **({"study_key": m0.extra["study_key"]} if m0.extra.get("study_key") else {})},
    )
    return vol, meta
