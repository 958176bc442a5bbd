"""DICOM files with pydicom: pixel data in the values and look a reader expects.

Order of operations (DICOM PS3.4 N.2): decode (any transfer syntax through
pydicom's decoder plugins) -> colour to RGB -> modality LUT (rescale to HU for
CT) -> optional VOI LUT / window -> MONOCHROME1 inversion. pydicom has no
inversion helper, so inversion is done here, over the full value range that the
previous step can produce, and any window is mirrored with it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.meta import ImageMeta

__all__ = ["read_dicom", "is_dicom", "read_header"]

def is_dicom(path: str | Path) -> bool:
    """True when the file has the ``DICM`` preamble marker (or parses as DICOM)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM"


def read_header(path: str | Path, *, force: bool = False):
    """Read a DICOM header without pixel data; raises :class:`ReadError`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except InvalidDicomError as exc:
        raise ReadError(path, f"not a DICOM file ({exc})") from exc
    except (OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise ReadError(path, f"unreadable DICOM header ({exc})") from exc


def _frame_rescale(ds) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-frame (slope, intercept) of an enhanced multi-frame object, if any."""
    nf = int(ds.get("NumberOfFrames", 1) or 1)

    def _pvt(item):
        seq = item.get("PixelValueTransformationSequence") if item is not None else None
        if seq:
            t = seq[0]
            if "RescaleSlope" in t or "RescaleIntercept" in t:
                return float(t.get("RescaleSlope", 1.0)), float(t.get("RescaleIntercept", 0.0))
        return None

    shared = ds.get("SharedFunctionalGroupsSequence")
    shared_v = _pvt(shared[0]) if shared else None
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if shared_v is None and not per:
        return None
    slopes, inters = np.ones(nf), np.zeros(nf)
    found = shared_v is not None
    for i in range(nf):
        v = _pvt(per[i]) if per and i < len(per) else None
        v = v or shared_v
        if v is not None:
            slopes[i], inters[i] = v
            found = True
    return (slopes, inters) if found else None


def _stored_range(ds) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _spacing_2d(ds) -> tuple[float, float] | None:
    for key in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        v = ds.get(key)
        if v is not None and len(v) == 2 and float(v[0]) > 0 and float(v[1]) > 0:
            return float(v[0]), float(v[1])
    # Enhanced objects keep it in the functional groups.
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        pm = shared[0].get("PixelMeasuresSequence")
        if pm and pm[0].get("PixelSpacing") is not None:
            return float(pm[0].PixelSpacing[0]), float(pm[0].PixelSpacing[1])
    # Ultrasound regions store physical deltas in cm (units code 3).
    regions = ds.get("SequenceOfUltrasoundRegions")
    if regions:
        r = regions[0]
        if int(r.get("PhysicalUnitsXDirection", 0)) == 3 and int(r.get("PhysicalUnitsYDirection", 0)) == 3:
            return abs(float(r.PhysicalDeltaY)) * 10.0, abs(float(r.PhysicalDeltaX)) * 10.0
    return None


def _first_window(ds) -> tuple[float, float] | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        voi = shared[0].get("FrameVOILUTSequence") if shared else None
        if voi:
            c, w = voi[0].get("WindowCenter"), voi[0].get("WindowWidth")
    if c is None or w is None:
        return None
    from pydicom.multival import MultiValue

    c = c[0] if isinstance(c, MultiValue) else c
    w = w[0] if isinstance(w, MultiValue) else w
    return float(c), float(w)


def read_dicom(path: str | Path, *, apply_voi: bool = False, force: bool | None = None) -> tuple[np.ndarray, ImageMeta]:
    """Read one DICOM file into display-ready values.

    Args:
        path: the file.
        apply_voi: also apply the VOI LUT / first window (values then lie in the
            window's output range); otherwise the window is only reported.
        force: parse without the ``DICM`` marker; ``None`` checks the file.

    Returns:
        ``(array, meta)``: float32 for monochrome data after the modality LUT
        (HU for CT), uint8 RGB for colour data; frames first for multi-frame.

    Raises:
        ReadError: not DICOM, no pixel data, truncated, or no decoder available.
    """
    import pydicom
    from pydicom import pixels
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(path, force=(not is_dicom(path)) if force is None else force)
    except InvalidDicomError as exc:
        raise ReadError(path, f"not a DICOM file ({exc})") from exc
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ReadError(path, f"unreadable DICOM ({type(exc).__name__}: {exc})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if any("End of file" in str(w.message) for w in caught):
            raise ReadError(path, "truncated file: it ends before its pixel data is complete")
        sop = ds.get("SOPClassUID")
        what = getattr(sop, "name", None) or "this object"
        raise ReadError(path, f"DICOM file has no pixel data ({what}); nothing to classify")
    if "TransferSyntaxUID" not in ds.file_meta:
        # Files without meta information: guess from how pydicom parsed them.
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian

        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    tsuid = ds.file_meta.TransferSyntaxUID
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise ReadError(
            path, f"cannot decode pixel data in transfer syntax {tsuid.name} ({exc}); "
            "install the matching pydicom decoder plugin"
        ) from exc
    except (ValueError, EOFError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ReadError(path, f"corrupt or truncated DICOM image ({type(exc).__name__}: {exc})") from exc

    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    units, rescaled, inverted, window = "", False, False, None

    if photometric == "PALETTE COLOR":
        rgb = pixels.apply_color_lut(arr, ds)
        # Some writers store 8-bit entries in a 16-bit LUT; scale by what is there.
        arr = _to_uint8_rgb(rgb, 16 if rgb.dtype == np.uint16 and rgb.max() > 255 else 8)
    elif spp == 3:
        # pydicom converts YBR to RGB while decoding (as_rgb=True) for all YBR
        # variants; the stored photometric stays in the metadata.
        bits_alloc = int(ds.get("BitsAllocated", 8))
        arr = _to_uint8_rgb(arr, bits_alloc)
    else:
        out = arr
        frame_rs = _frame_rescale(ds) if nframes > 1 or "SharedFunctionalGroupsSequence" in ds else None
        lo, hi = _stored_range(ds)
        if frame_rs is not None:
            slopes, inters = frame_rs
            shape = (-1,) + (1,) * (out.ndim - 1) if nframes > 1 else ()
            s = slopes.reshape(shape) if nframes > 1 else slopes[0]
            b = inters.reshape(shape) if nframes > 1 else inters[0]
            out = out.astype(np.float64) * s + b
            lo, hi = lo * float(np.min(slopes)) + float(np.min(inters)), hi * float(np.max(slopes)) + float(np.max(inters))
            rescaled = True
        elif ds.get("ModalityLUTSequence"):
            try:
                out = np.asarray(pixels.apply_modality_lut(arr, ds))
            except (ValueError, AttributeError, TypeError) as exc:
                raise ReadError(path, f"invalid modality LUT ({exc})") from exc
            lo, hi = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
            rescaled = True
        elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
            # The linear modality LUT (PS3.3 C.11.1.1.2), in float32: exact for
            # stored integers up to 2**24, and half the memory traffic of float64.
            try:
                s, b = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
            except (ValueError, TypeError) as exc:
                raise ReadError(path, f"invalid rescale slope/intercept ({exc})") from exc
            out = arr.astype(np.float32)
            if s != 1.0:
                out *= np.float32(s)
            if b != 0.0:
                out += np.float32(b)
            lo, hi = sorted((lo * s + b, hi * s + b))
            rescaled = True
        modality = str(ds.get("Modality", "")).upper()
        if rescaled and modality == "CT":
            units = "HU"
        window = _first_window(ds)
        if apply_voi and (window is not None or ds.get("VOILUTSequence")):
            try:
                out = np.asarray(pixels.apply_voi_lut(out.astype(np.float64), ds), dtype=np.float64)
            except (ValueError, AttributeError, TypeError, IndexError) as exc:
                raise ReadError(path, f"invalid VOI LUT / window ({exc})") from exc
            if ds.get("VOILUTSequence") and not window:
                depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                lo, hi = 0, 2**depth - 1
            window = None  # already applied
        if photometric == "MONOCHROME1":
            out = np.float32(lo + hi) - out.astype(np.float32, copy=False)
            if window is not None:
                window = ((lo + hi) - window[0], window[1])
            inverted = True
        arr = out.astype(np.float32, copy=False)

    channels = 3 if (spp == 3 or photometric == "PALETTE COLOR") else 1
    meta = ImageMeta(
        path=str(path),
        format="dicom",
        modality=str(ds.get("Modality", "OT") or "OT").upper(),
        shape=tuple(int(s) for s in arr.shape),
        frames=nframes,
        spacing=_spacing_2d(ds),
        photometric=photometric,
        bits=int(ds.get("BitsStored", ds.get("BitsAllocated", 8))),
        channels=channels,
        window=window,
        inverted=inverted,
        rescaled=rescaled,
        units=units,
        transfer_syntax=tsuid.name,
    )
    return arr, meta


def _to_uint8_rgb(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if bits > 8:
        return (arr.astype(np.float64) / (2**bits - 1) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return arr.clip(0, 255).astype(np.uint8)
