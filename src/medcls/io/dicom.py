"""DICOM files with pydicom: pixel data in the values and look a reader expects.

Order of operations (DICOM PS3.4 N.2): decode (any transfer syntax through
pydicom's decoder plugins; GDCM directly for 12-bit JPEG Extended, which pydicom
only hands to the GPL-licensed libjpeg plugin) -> colour to RGB -> modality LUT
(rescale to HU for CT) -> optional VOI LUT / window -> MONOCHROME1 inversion.
pydicom has no inversion helper, so inversion is done here, over the full value
range that the previous step can produce, and any window is mirrored with it.

Every file is parsed by :func:`dcmread_safely`: only regular files, a deflated
data set inflated within the pixel budget, large non-pixel values left on disk,
and pydicom's warnings (which quote raw header values) silenced. The declared
image size, and the size in the first compressed frame's own header, are checked
against the budget before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from medcls.errors import LimitError, ReadError
from medcls.io.limits import check_pixels, max_pixels, require_regular_file
from medcls.io.meta import ImageMeta

__all__ = ["read_dicom", "is_dicom", "read_header", "dcmread_safely"]

_DEFLATED = "1.2.840.10008.1.2.1.99"
_JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"


def _safe(exc: BaseException) -> str:
    """An exception as one line without the header values it may quote (they can be patient data)."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", str(exc).splitlines()[0] if str(exc) else "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_dicom(path: str | Path) -> bool:
    """True when the file has the ``DICM`` preamble marker (only regular files are opened)."""
    from medcls.io.limits import not_regular_reason

    if not_regular_reason(path) is not None:
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) >= 132 and head[128:132] == b"DICM"


def _check_deflate(path: Path) -> None:
    """A deflated data set must inflate within the pixel budget (pydicom inflates it whole, unbounded)."""
    import pydicom

    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    if _DEFLATED.encode() not in head:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - pydicom's own read below reports an unreadable header
        return
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:
        return
    start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength", 0))
    limit = 4 * max_pixels()
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(1 << 20):
            try:
                size += len(inflater.decompress(chunk, limit + 1 - size))
            except zlib.error as exc:
                raise ReadError(path, f"corrupt deflated data set ({_safe(exc)})") from exc
            if size > limit or inflater.unconsumed_tail:
                raise LimitError(path, f"its deflated data set inflates to more than {limit:,} bytes, beyond the "
                                      "pixel budget; raise MEDCLS_MAX_PIXELS if it is real")


_DEFER_BYTES = 16 << 20  # header values this large are read from the file only when asked for


def _header_errors() -> tuple[type[BaseException], ...]:
    from pydicom.errors import BytesLengthException

    # what pydicom raises on a damaged header: an unknown VR is a NotImplementedError,
    # a value of the wrong length a BytesLengthException
    return (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, NotImplementedError, struct.error,
            zlib.error, BytesLengthException)


def dcmread_safely(path: str | Path, *, stop_before_pixels: bool = False, force: bool = False):
    """``pydicom.dcmread`` within medcls's limits; returns ``(dataset, truncated)``.

    Raises pydicom's own exceptions for the caller to word; ``truncated`` is True
    when pydicom reached the end of the file before the end of the data set.
    """
    import pydicom

    path = Path(path)
    require_regular_file(path)
    _check_deflate(path)
    with warnings.catch_warnings(record=True) as caught, _pydicom_log_off():
        warnings.simplefilter("always")
        ds = pydicom.dcmread(path, force=force, stop_before_pixels=stop_before_pixels, defer_size=_DEFER_BYTES)
        _settle(ds)
        _settle(ds.file_meta)
    return ds, any("End of file" in str(w.message) for w in caught)


@contextlib.contextmanager
def _pydicom_log_off():
    """pydicom logs what it warns, quoting the offending value; a user's logging setup must not receive it."""
    log = logging.getLogger("pydicom")
    saved = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = saved


def _settle(ds) -> None:
    """Convert every header element now, while pydicom's warnings are silenced.

    pydicom converts an element on first access and warns, quoting its value, when
    the value breaks its VR (an InstanceNumber holding a name, say): that warning
    would carry header text to the screen or a log wherever the element is next
    read. An element that cannot be converted at all is dropped: nothing in it is
    usable. Deferred (large) values and pixel data are left unread.
    """
    for tag in list(ds.keys()):
        if tag.group == 0x7FE0:
            continue
        try:
            raw = ds.get_item(tag, keep_deferred=True)
            if raw is None:
                continue
            if getattr(raw, "value", b"") is None and getattr(raw, "length", 0) >= _DEFER_BYTES:
                continue  # deferred: read only if asked for
            elem = ds[tag]
        except Exception:  # noqa: BLE001 - any failure means the element holds nothing usable
            del ds[tag]
            continue
        if elem.VR == "SQ":
            for item in elem.value or ():
                _settle(item)


def read_header(path: str | Path, *, force: bool = False):
    """Read a DICOM header without pixel data; raises :class:`ReadError`."""
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread_safely(path, stop_before_pixels=True, force=force)[0]
    except InvalidDicomError as exc:
        raise ReadError(path, "not a DICOM file") from exc
    except _header_errors() as exc:
        raise ReadError(path, f"unreadable DICOM header ({_safe(exc)})") from exc


@contextlib.contextmanager
def _quiet():
    """pydicom's warnings quote header values: keep them off the user's screen (and out of logs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _quiet_c_stderr():
    """GDCM's JPEG codec prints through C's stderr when it falls back to 12 bits; hide that line."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    """The first (centre, width) window of the file, None when there is none; ValueError when unusable."""
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
    c, w = float(c), float(w)
    if not (np.isfinite(c) and np.isfinite(w) and w > 0):
        raise ValueError("window width must be a positive number")
    return c, w


def _frame_count(path: Path, ds, warn: list[str]) -> int:
    """NumberOfFrames; when it is not a number, the count the pixel data holds (native data), with a warning."""
    raw = ds.get("NumberOfFrames", 1)
    try:
        n = int(raw) if raw not in (None, "") else 1
        if n < 1:
            raise ValueError
        return n
    except (TypeError, ValueError):
        pass
    n = 1
    if not ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        per = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        n = max(1, len(ds.PixelData) // per) if per else 1
    warn.append(f"NumberOfFrames is not a whole number; read as {n}, the frames its pixel data holds")
    ds.NumberOfFrames = n
    return n


def _stream_size(fragment: bytes) -> tuple[int, int, int] | None:
    """(width, height, components) from a JPEG 2000 SIZ marker or a JPEG / JPEG-LS SOF segment."""
    from pydicom.pixels.utils import _get_jpg_parameters

    off = 0
    if fragment.startswith(b"\x00\x00\x00\x0cjP  "):  # a JP2 file around the codestream: find its jp2c box
        off = 12
        while off + 8 <= len(fragment) and fragment[off + 4:off + 8] != b"jp2c":
            length = int.from_bytes(fragment[off:off + 4], "big")
            if length < 8:
                return None
            off += length
        off += 8
    if fragment[off:off + 4] == b"\xff\x4f\xff\x51" and len(fragment) >= off + 42:
        x, y, xo, yo = struct.unpack(">4I", fragment[off + 8:off + 24])
        c = int.from_bytes(fragment[off + 40:off + 42], "big")
        return max(0, x - xo), max(0, y - yo), c
    info = _get_jpg_parameters(fragment) if fragment[:2] == b"\xff\xd8" else {}
    if "width" in info:
        return int(info["width"]), int(info["height"]), int(info.get("components", 1))
    return None


def _check_declared_size(path: Path, ds, nframes: int) -> None:
    """The header's image size, and the first compressed frame's own, within the pixel budget."""
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    spp, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 0) or 0)
    if rows < 1 or cols < 1:
        raise ReadError(path, "its header gives no image size (Rows and Columns)")
    if bits not in (1, 8, 16, 32, 64) or spp not in (1, 3, 4):
        raise ReadError(path, "its BitsAllocated or SamplesPerPixel is not one DICOM allows")
    check_pixels(path, rows * cols * nframes * spp,
                 f"its header's {rows} x {cols} pixels x {nframes} frame(s) x {spp} sample(s)")
    if ds.file_meta.TransferSyntaxUID.is_compressed and "PixelData" in ds:
        from pydicom.encaps import generate_fragments

        try:
            fragments = generate_fragments(ds.PixelData)
            next(fragments)  # the basic offset table
            first = next(fragments)
        except (StopIteration, ValueError, struct.error, TypeError):
            return  # no fragments: the decoder reports the broken stream
        size = _stream_size(bytes(first[:1 << 16]))
        if size is not None:
            w, h, c = size
            check_pixels(path, w * h * max(c, 1) * nframes,
                         f"its compressed image's own header ({w} x {h} pixels x {c} component(s) per frame)")


def _decode_with_gdcm(path: Path, ds) -> np.ndarray | None:
    """Monochrome pixel data decoded by GDCM itself (None when GDCM is missing or cannot).

    pydicom refuses 12-bit JPEG Extended unless the GPL-3 pylibjpeg-libjpeg is
    installed; GDCM's own BSD-licensed codec decodes it.
    """
    try:
        import gdcm
    except ImportError:
        return None
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return None
    dtypes = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16, "UINT32": np.uint32,
              "INT32": np.int32, "FLOAT32": np.float32, "FLOAT64": np.float64}
    with _quiet_c_stderr():
        reader = gdcm.ImageReader()
        reader.SetFileName(str(path))
        if not reader.Read():
            return None
        image = reader.GetImage()
        dtype = dtypes.get(image.GetPixelFormat().GetScalarTypeAsString())
        if dtype is None:
            return None
        buf = image.GetBuffer()
        if buf is None:
            return None
        buf = buf.encode("utf-8", "surrogateescape")
    dims = [image.GetDimension(i) for i in range(image.GetNumberOfDimensions())]
    cols, rows = dims[0], dims[1]
    frames = dims[2] if len(dims) > 2 else 1
    if len(buf) != rows * cols * frames * np.dtype(dtype).itemsize:
        return None
    arr = np.frombuffer(buf, dtype).reshape((frames, rows, cols) if frames > 1 else (rows, cols))
    return arr.copy()


def _decode(path: Path, ds, tsuid) -> np.ndarray:
    try:
        with _quiet():
            return ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        arr = _decode_with_gdcm(path, ds)
        if arr is not None:
            return arr
        raise ReadError(path, f"cannot decode pixel data in transfer syntax {tsuid.name} ({_safe(exc)}); "
                              "install the matching pydicom decoder plugin") from exc
    except (ValueError, EOFError, KeyError, IndexError, AttributeError, TypeError, OSError, struct.error,
            zlib.error, MemoryError) as exc:
        raise ReadError(path, f"corrupt or truncated DICOM image ({_safe(exc)})") from exc
    except BaseException as exc:
        # The Rust decoders (pylibjpeg-rle) panic on some corrupt streams; pyo3 raises
        # its PanicException, a BaseException, which no `except Exception` would catch.
        if type(exc).__name__ != "PanicException":
            raise
        raise ReadError(path, "corrupt compressed pixel data (the decoder gave up on it)") from exc


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
    path = Path(path)
    with _quiet():
        return _read_dicom(path, apply_voi, force)


def _read_dicom(path: Path, apply_voi: bool, force: bool | None) -> tuple[np.ndarray, ImageMeta]:
    from pydicom import pixels
    from pydicom.errors import InvalidDicomError

    try:
        ds, truncated = dcmread_safely(path, force=(not is_dicom(path)) if force is None else force)
    except InvalidDicomError as exc:
        raise ReadError(path, "not a DICOM file") from exc
    except _header_errors() as exc:
        raise ReadError(path, f"unreadable DICOM ({_safe(exc)})") from exc
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if truncated:
            raise ReadError(path, "truncated file: it ends before its pixel data is complete")
        sop = ds.get("SOPClassUID")
        what = getattr(sop, "name", None) or "this object"
        raise ReadError(path, f"DICOM file has no pixel data ({what}); nothing to classify")
    if "TransferSyntaxUID" not in ds.file_meta:
        # Files without meta information: guess from how pydicom parsed them.
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    tsuid = ds.file_meta.TransferSyntaxUID
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    warn: list[str] = []
    try:
        nframes = _frame_count(path, ds, warn)
        _check_declared_size(path, ds, nframes)
        spp = int(ds.get("SamplesPerPixel", 1))
        bits_stored = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ReadError(path, f"its image size, frames or bit depth is not a number ({_safe(exc)})") from exc
    arr = _decode(path, ds, tsuid)
    units, rescaled, inverted, window = "", False, False, None

    if photometric == "PALETTE COLOR":
        try:
            rgb = pixels.apply_color_lut(arr, ds)
        except (ValueError, AttributeError, TypeError, KeyError, IndexError) as exc:
            raise ReadError(path, f"invalid palette colour lookup table ({_safe(exc)})") from exc
        # 16-bit entries hold the 8-bit value in their high byte (v x 256, or v x 257 to fill the range);
        # some writers store 8-bit values in 16-bit entries instead
        arr = (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 and rgb.max() > 255 else rgb.astype(np.uint8)
    elif spp == 3:
        # pydicom converts YBR to RGB while decoding (as_rgb=True) for all YBR
        # variants; the stored photometric stays in the metadata.
        arr = _to_uint8_rgb(arr, int(ds.get("BitsAllocated", 8)))
    else:
        out = arr
        try:
            frame_rs = _frame_rescale(ds) if nframes > 1 or "SharedFunctionalGroupsSequence" in ds else None
        except (TypeError, ValueError) as exc:
            raise ReadError(path, f"invalid per-frame rescale slope/intercept ({_safe(exc)})") from exc
        lo, hi = _stored_range(ds)
        if frame_rs is not None:
            slopes, inters = frame_rs
            if not (np.isfinite(slopes).all() and np.isfinite(inters).all()):
                raise ReadError(path, "a per-frame rescale slope or intercept is not a finite number")
            shape = (-1,) + (1,) * (out.ndim - 1) if nframes > 1 else ()
            s = slopes.reshape(shape) if nframes > 1 else slopes[0]
            b = inters.reshape(shape) if nframes > 1 else inters[0]
            out = out.astype(np.float64) * s + b
            lo, hi = lo * float(np.min(slopes)) + float(np.min(inters)), hi * float(np.max(slopes)) + float(np.max(inters))
            rescaled = True
        elif ds.get("ModalityLUTSequence"):
            try:
                out = np.asarray(pixels.apply_modality_lut(arr, ds))
                lo, hi = 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
            except (ValueError, AttributeError, TypeError, IndexError, KeyError) as exc:
                raise ReadError(path, f"invalid modality LUT ({_safe(exc)})") from exc
            rescaled = True
        elif "RescaleSlope" in ds or "RescaleIntercept" in ds:
            # The linear modality LUT (PS3.3 C.11.1.1.2), in float32: exact for
            # stored integers up to 2**24, and half the memory traffic of float64.
            try:
                s, b = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
            except (ValueError, TypeError) as exc:
                raise ReadError(path, f"invalid rescale slope/intercept ({_safe(exc)})") from exc
            if not (np.isfinite(s) and np.isfinite(b)):
                raise ReadError(path, "its rescale slope or intercept is not a finite number")
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
        try:
            window = _first_window(ds)
        except (ValueError, TypeError):
            warn.append("its window (WindowCenter/WindowWidth) is not usable (the width must be a positive "
                        "number); ignored")
        if apply_voi and (window is not None or ds.get("VOILUTSequence")):
            try:
                out = np.asarray(pixels.apply_voi_lut(out.astype(np.float64), ds), dtype=np.float64)
                if ds.get("VOILUTSequence") and not window:
                    depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                    lo, hi = 0, 2**depth - 1
            except (ValueError, AttributeError, TypeError, IndexError, KeyError, ZeroDivisionError) as exc:
                raise ReadError(path, f"invalid VOI LUT / window ({_safe(exc)})") from exc
            window = None  # already applied
        if photometric == "MONOCHROME1":
            out = np.float32(lo + hi) - out.astype(np.float32, copy=False)
            if window is not None:
                window = ((lo + hi) - window[0], window[1])
            inverted = True
        arr = out.astype(np.float32, copy=False)

    try:
        spacing = _spacing_2d(ds)
    except (ValueError, TypeError, AttributeError, IndexError):
        spacing = None
        warn.append("its pixel spacing is not a pair of numbers; ignored")
    channels = 3 if (spp == 3 or photometric == "PALETTE COLOR") else 1
    meta = ImageMeta(
        path=str(path),
        format="dicom",
        modality=str(ds.get("Modality", "OT") or "OT").upper(),
        shape=tuple(int(s) for s in arr.shape),
        frames=nframes,
        spacing=spacing,
        photometric=photometric,
        bits=bits_stored,
        channels=channels,
        window=window,
        inverted=inverted,
        rescaled=rescaled,
        units=units,
        transfer_syntax=tsuid.name,
        extra={"warnings": warn} if warn else {},
    )
    key = study_key(ds)
    if key:
        meta.extra["study_key"] = key
    return arr, meta


def study_key(ds) -> str | None:
    """A stand-in for the Study Instance UID that groups a study's images (evaluation per study) without
    being the UID: a truncated SHA-256, so no identifier from the header leaves the file."""
    import hashlib

    uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    return hashlib.sha256(uid.encode()).hexdigest()[:16] if uid else None


def _to_uint8_rgb(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if bits > 8:
        return (arr.astype(np.float64) / (2**bits - 1) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return arr.clip(0, 255).astype(np.uint8)
