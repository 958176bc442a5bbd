"""NIfTI-1/2 volumes with nibabel, reoriented like a DICOM axial series."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.meta import ImageMeta

__all__ = ["read_nifti", "CANONICAL"]

# DICOM's patient axes (x to patient Left, y to Posterior, z to Superior). After
# reorienting to these and reversing the axis order the array is (Z, Y, X) =
# ("S", "P", "L"): the same layout a sorted axial DICOM series has, displayed in
# radiological convention (anterior at the top, patient's right on the left).
CANONICAL = ("L", "P", "S")


def read_nifti(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a ``.nii`` / ``.nii.gz`` file.

    Returns:
        ``(array, meta)``: float32 ``(Z, Y, X)`` for 3-D data, ``(T, Z, Y, X)`` for
        4-D (time or sequences; ``meta.frames`` = T). Spacing in mm as (z, y, x).
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    path = Path(path)
    try:
        img = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, ValueError) as exc:
        raise ReadError(path, f"not a readable NIfTI file ({exc})") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) or len(img.shape) < 2:
        raise ReadError(path, f"unsupported NIfTI content ({type(img).__name__}, shape {img.shape})")
    if len(img.shape) > 4:
        raise ReadError(path, f"NIfTI with {len(img.shape)} dimensions is not supported (at most 4)")
    try:
        ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(CANONICAL)) if len(img.shape) >= 3 else None
        if ornt is not None:
            img = img.as_reoriented(ornt)
        data = np.asarray(img.dataobj, dtype=np.float32)  # applies scl_slope / scl_inter
    except (OSError, EOFError, ValueError, MemoryError) as exc:
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
