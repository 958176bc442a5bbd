"""NIfTI-1/2 volumes with nibabel, reoriented like a DICOM axial series."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.limits import check_pixels, require_regular_file
from medcls.io.meta import ImageMeta

__all__ = ["read_nifti", "CANONICAL"]

# DICOM's patient axes (x to patient Left, y to Posterior, z to Superior). After
# reorienting to these and reversing the axis order the array is (Z, Y, X) =
# ("S", "P", "L"): the same layout a sorted axial DICOM series has, displayed in
# radiological convention (anterior at the top, patient's right on the left).
CANONICAL = ("L", "P", "S")


_MAX_HEADER = 64 << 20  # the header and its extensions, before the voxels: far more than any real file has


def _check_header(path: Path) -> None:
    """The header's shape and voxel offset within the limits, read from its first 540 bytes only.

    nibabel would read every extension up to the voxel offset, and the voxels,
    before medcls could look at their size; a small .nii.gz can inflate to
    gigabytes.
    """
    import gzip
    import io

    import nibabel as nib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        raise ReadError(path, f"not a readable NIfTI file ({getattr(exc, 'strerror', None) or type(exc).__name__})") from exc
    if len(raw) < 348:
        raise ReadError(path, "truncated NIfTI file: shorter than its header")
    try:
        header = (nib.Nifti2Header if raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")
                  else nib.Nifti1Header).from_fileobj(io.BytesIO(raw), check=False)
        shape = header.get_data_shape()
        offset = int(header.get("vox_offset", 0))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds on a damaged header
        raise ReadError(path, f"unreadable NIfTI header ({type(exc).__name__})") from exc
    if not shape or any(int(n) < 1 for n in shape):
        raise ReadError(path, f"its header gives a dimension of zero length ({' x '.join(map(str, shape)) or 'none'})")
    if offset > _MAX_HEADER:
        raise ReadError(path, f"its voxels start {offset:,} bytes in, beyond any real header; refusing to read that far")
    values = int(np.prod([int(n) for n in shape], dtype=np.float64))
    check_pixels(path, values, f"its header's {' x '.join(map(str, shape))} voxels")


def read_nifti(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a ``.nii`` / ``.nii.gz`` file.

    Returns:
        ``(array, meta)``: float32 ``(Z, Y, X)`` for 3-D data, ``(T, Z, Y, X)`` for
        4-D (time or sequences; ``meta.frames`` = T). Spacing in mm as (z, y, x).
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    path = Path(path)
    require_regular_file(path)
    _check_header(path)
    try:
        img = nib.load(str(path))
    except (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, TypeError, IndexError, AttributeError,
            struct.error, zlib.error) as exc:
        raise ReadError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) or len(img.shape) < 2:
        raise ReadError(path, f"unsupported NIfTI content ({type(img).__name__}, shape {img.shape})")
    if len(img.shape) > 4:
        raise ReadError(path, f"NIfTI with {len(img.shape)} dimensions is not supported (at most 4)")
    try:
        ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(CANONICAL)) if len(img.shape) >= 3 else None
        if ornt is not None:
            img = img.as_reoriented(ornt)
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except (OSError, EOFError, ValueError, MemoryError, TypeError, IndexError, AttributeError, struct.error,
            zlib.error, np.linalg.LinAlgError, HeaderDataError) as exc:
        raise ReadError(path, f"corrupt or truncated NIfTI data ({type(exc).__name__}: {exc})") from exc
    zooms = [float(z) for z in img.header.get_zooms()]
    frames = 1
    if data.ndim == 2:  # a single slice
        arr, spacing, orient = data.T, (zooms[1], zooms[0]), None
    else:
        arr = np.ascontiguousarray(np.moveaxis(data, [0, 1, 2], [2, 1, 0]))  # (X,Y,Z[,T]) -> (Z,Y,X[,T])
        if arr.ndim == 4:
            arr = np.ascontiguousarray(np.moveaxis(arr, 3, 0))  # -> (T,Z,Y,X)
            frames = arr.shape[0]
        spacing = (zooms[2], zooms[1], zooms[0])
        codes = nib.aff2axcodes(img.affine)
        orient = "".join(reversed(codes))
    return arr, ImageMeta(
        path=str(path),
        format="nifti",
        modality="MR" if frames > 1 else "OT",
        shape=tuple(arr.shape),
        frames=frames,
        spacing=spacing,
        bits=int(np.dtype(img.get_data_dtype()).itemsize * 8),
        orientation=orient,
        is_volume=data.ndim >= 3,
        extra={"intent": str(img.header.get_intent()[0])},
    )
