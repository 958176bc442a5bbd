"""What a reader reports about an image besides its pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ImageMeta"]


@dataclass
class ImageMeta:
    """Metadata a model and a person need; never patient identifiers.

    Array layout conventions (see :func:`medcls.io.read`):
    grey 2-D ``(H, W)``; colour ``(H, W, 3)`` RGB; multi-frame ``(F, H, W[, 3])``;
    volumes ``(Z, Y, X)`` with axial slices along axis 0. ``spacing`` is in mm and
    follows the array's spatial axes (frames/channels excluded).
    """

    path: str
    format: str  # dicom, dicom-series, nifti, png, jpeg, tiff, npz
    modality: str = "OT"  # DICOM modality code: CR DX MG US CT MR OT ...
    shape: tuple[int, ...] = ()
    frames: int = 1
    spacing: tuple[float, ...] | None = None
    photometric: str = "MONOCHROME2"  # as stored in the file
    bits: int = 8  # bits stored per sample
    channels: int = 1
    window: tuple[float, float] | None = None  # (centre, width) in the returned values' units
    inverted: bool = False  # MONOCHROME1 data was inverted to the usual look
    rescaled: bool = False  # a modality LUT / rescale was applied (e.g. CT -> HU)
    units: str = ""  # "HU" for CT after rescale, else ""
    orientation: str | None = None  # axis codes of the array axes, e.g. "SAR" / "SPL"
    transfer_syntax: str | None = None
    is_volume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["spacing"] = list(self.spacing) if self.spacing is not None else None
        d["window"] = list(self.window) if self.window is not None else None
        return d
