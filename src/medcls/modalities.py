"""Per-modality preparation: pure array -> array transforms, each testable alone.

Every transform takes a NumPy array and returns a new float32 array; none reads
files. :func:`prepare` chains them by modality into model input ``(C, H, W)``
with values in [0, 1]; its settings are a :class:`Preparation` that a run saves
beside its weights so prediction repeats training-time preparation exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Sequence

import numpy as np

from medcls.errors import MedclsError, ReadError

__all__ = [
    "HU_WINDOWS", "MODALITIES", "for_display", "ModalityInfo", "FAMILIES", "VOLUME_AXES", "Preparation", "window",
    "percentile_window", "clahe", "to_grey", "content_box", "crop_to_content", "ct_windows", "zscore_in_body",
    "percentile_in_body", "body_mask", "stack_channels", "volume_slices", "slices_25d", "resize", "resize_volume",
    "VOLUME_MODES", "WHOLE_VOLUME_MODES", "prepare",
    "modality_family", "mirror_safe", "PrepOptions", "MR_NORMS", "FAMILY_LIMITS",
]

# (centre, width) in HU, the usual radiology presets.
HU_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

FAMILIES = ("xray", "us", "ct", "mr", "other")  # how pixels are prepared; "auto": from each file's header
VOLUME_AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # of a (Z, Y, X) volume
# how a volume becomes model input: 2-D items (slices, 2.5-D stacks) or the whole volume (ACS and 3-D networks)
VOLUME_MODES = ("slices", "2.5d", "acs", "3d")
WHOLE_VOLUME_MODES = ("acs", "3d")
MAX_RESAMPLED_VOXELS = 1 << 27  # a volume resampled to --volume-spacing holds at most this many voxels (512 MiB)


class ModalityInfo(NamedTuple):
    """What medcls needs to know about a DICOM modality code."""

    family: str  # the preparation family (one of FAMILIES)
    mirror_safe: bool  # a left-right flip gives an image of the same kind (an augmentation that is safe)


# The one modality table: DICOM Modality codes (PS3.3 C.7.3.1.1.1, with the retired RG/DR still
# found in archives). A left-right flip mirrors anatomy: a chest radiograph flipped puts the heart
# on the right, an axial CT or MR slice swaps the patient's left and right organs, a dental film
# swaps the quadrants. A mammogram flipped looks like the other breast, an ultrasound probe is held
# either way round, and microscopy, photographs and electron micrographs have no handedness.
MODALITIES: dict[str, ModalityInfo] = {
    **{code: ModalityInfo("xray", False) for code in ("CR", "DX", "RG", "DR", "PX", "IO", "XA", "RF")},
    "MG": ModalityInfo("xray", True),
    "US": ModalityInfo("us", True),
    "IVUS": ModalityInfo("us", True),
    "CT": ModalityInfo("ct", False),
    "MR": ModalityInfo("mr", False),
    "PT": ModalityInfo("other", False),
    "NM": ModalityInfo("other", False),
    "OPT": ModalityInfo("other", False),
    **{code: ModalityInfo("other", True) for code in ("SM", "XC", "EM", "OT")},
}
_UNKNOWN = ModalityInfo("other", False)

# What each family of modality cannot do, for a model card's caveats (the seed's own list): a model
# inherits the limits of the images it reads.
FAMILY_LIMITS: dict[str, str] = {
    "xray": "X-ray: ionising radiation; a 2-D projection with overlapping structures and poor soft-tissue contrast",
    "us": "ultrasound: operator dependent (probe position, gain, depth differ between acquisitions), limited "
          "penetration and speckle; images of one lesion are correlated",
    "ct": "CT: ionising radiation at a higher dose than X-ray, and cost; contrast and reconstruction kernel vary "
          "between protocols and scanners",
    "mr": "MRI: sensitive to motion, costly and slow; intensities have no absolute scale and differ between "
          "scanners and sequences",
    "other": "a modality outside X-ray, ultrasound, CT and MRI: medcls applies no modality-specific preparation",
}


def modality_family(code: str) -> str:
    """The preparation family of a DICOM modality code: xray, us, ct, mr or other."""
    return MODALITIES.get((code or "").upper(), _UNKNOWN).family


def mirror_safe(code: str) -> bool:
    """Whether a left-right flip of an image of this modality is still a plausible image of it."""
    return MODALITIES.get((code or "").upper(), _UNKNOWN).mirror_safe


def window(x: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window to [0, 1]: ``centre - width/2`` -> 0, ``centre + width/2`` -> 1."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    lo = centre - width / 2.0
    return np.clip((np.asarray(x, dtype=np.float32) - lo) / float(width), 0.0, 1.0)


def percentile_window(x: np.ndarray, lower: float = 0.5, upper: float = 99.5, mask: np.ndarray | None = None) -> np.ndarray:
    """Map the [lower, upper] percentiles of ``x`` (within ``mask``) to [0, 1]."""
    x = np.asarray(x, dtype=np.float32)
    vals = x[mask] if mask is not None and mask.any() else x
    lo, hi = np.percentile(vals, [lower, upper])
    if hi <= lo:
        return np.zeros_like(x) if hi == lo and x.max() == x.min() else np.clip(x - lo, 0, 1)
    return np.clip((x - lo) / (hi - lo), 0.0, 1.0)


def clahe(x01: np.ndarray, clip_limit: float = 0.01, kernel_size: int | None = None) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (scikit-image) of a [0, 1] image, grey or RGB."""
    from skimage.exposure import equalize_adapthist

    x01 = np.clip(np.asarray(x01, dtype=np.float64), 0, 1)
    return equalize_adapthist(x01, kernel_size=kernel_size, clip_limit=clip_limit).astype(np.float32)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an ``(..., 3)`` array (grey input is returned as float32)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    if rgb.shape[-1] != 3:
        return rgb
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def content_box(img: np.ndarray, threshold: float = 0.05, margin: int = 2) -> tuple[int, int, int, int]:
    """``(row0, col0, row1, col1)`` of an ultrasound frame's largest bright region (the scan sector).

    Burnt-in text, rulers and logos are small separate components (a morphological
    opening detaches them); the dark border around the sector carries no
    information. ``img`` is [0, 1], grey or RGB; the whole frame when nothing is bright.
    """
    from skimage.measure import label, regionprops
    from skimage.morphology import disk, opening

    g = to_grey(img) if img.ndim == 3 else np.asarray(img, dtype=np.float32)
    mask = g > threshold
    if min(g.shape) >= 16:
        mask = opening(mask, disk(max(1, min(g.shape) // 64))).astype(bool)
    if not mask.any():
        return 0, 0, g.shape[0], g.shape[1]
    r0, c0, r1, c1 = max(regionprops(label(mask)), key=lambda r: r.area).bbox
    return max(0, r0 - margin), max(0, c0 - margin), min(g.shape[0], r1 + margin), min(g.shape[1], c1 + margin)


def crop_to_content(img: np.ndarray, threshold: float = 0.05, margin: int = 2) -> np.ndarray:
    """Crop an ultrasound frame to its scan sector (see :func:`content_box`)."""
    r0, c0, r1, c1 = content_box(img, threshold, margin)
    return img[r0:r1, c0:c1]


def ct_windows(hu: np.ndarray, names: Sequence[str] = ("abdomen",)) -> np.ndarray:
    """Named HU windows as channels: ``(len(names), *hu.shape)`` in [0, 1]."""
    unknown = [n for n in names if n not in HU_WINDOWS]
    if unknown:
        raise MedclsError(f"unknown CT window {unknown}; choose from {sorted(HU_WINDOWS)}")
    return np.stack([window(hu, *HU_WINDOWS[n]) for n in names])


def body_mask(x: np.ndarray) -> np.ndarray:
    """Foreground (body) mask by Otsu's threshold; all-true when the image is flat."""
    from skimage.filters import threshold_otsu

    x = np.asarray(x, dtype=np.float32)
    if float(x.max()) == float(x.min()):
        return np.ones(x.shape, bool)
    return x > threshold_otsu(x)


def zscore_in_body(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """MRI z-score with statistics from the body only (the background is ignored)."""
    x = np.asarray(x, dtype=np.float32)
    m = body_mask(x) if mask is None else mask
    vals = x[m] if m.any() else x
    sd = float(vals.std())
    return (x - float(vals.mean())) / (sd if sd > 0 else 1.0)


def percentile_in_body(x: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """MRI percentile normalisation to [0, 1] with percentiles from the body only."""
    return percentile_window(x, lower, upper, mask=body_mask(x))


def stack_channels(images: Sequence[np.ndarray]) -> np.ndarray:
    """Several co-registered sequences / windows of one shape -> ``(C, ...)``."""
    shapes = {np.shape(i) for i in images}
    if len(shapes) != 1:
        raise MedclsError(f"channels must share one shape, got {sorted(shapes)}")
    return np.stack([np.asarray(i, dtype=np.float32) for i in images])


def volume_slices(vol: np.ndarray, axis: int = 0) -> np.ndarray:
    """A ``(Z, Y, X)`` volume as 2-D slices along ``axis`` (0 axial, 1 coronal, 2 sagittal)."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(vol), axis, 0))


def slices_25d(vol: np.ndarray, axis: int = 0, k: int = 1) -> np.ndarray:
    """2.5-D: each slice with its ``k`` neighbours each side as channels.

    Returns ``(N, 2k+1, H, W)``; edge slices repeat the first/last slice.
    """
    s = volume_slices(vol, axis)
    n = s.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-k, k + 1)[None, :], 0, n - 1)
    return s[idx]


def resize(img: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize ``(H, W)`` or ``(H, W, C)`` with OpenCV: area when shrinking, linear when growing."""
    import cv2

    h, w = (size, size) if isinstance(size, int) else size
    img = np.asarray(img, dtype=np.float32)
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if (img.shape[0] > h or img.shape[1] > w) else cv2.INTER_LINEAR
    if img.ndim == 3 and img.shape[2] > 4:  # OpenCV handles <=4 channels in one call reliably
        return np.stack([cv2.resize(img[..., c], (w, h), interpolation=interp) for c in range(img.shape[2])], -1)
    out = cv2.resize(img, (w, h), interpolation=interp)
    return out[..., None] if img.ndim == 3 and out.ndim == 2 else out


def resize_volume(vol: np.ndarray, size: int, spacing: Sequence[float] | None = None,
                  target_spacing: float | None = None, where: str = "volume") -> np.ndarray:
    """A ``(Z, Y, X)`` volume in [0, 1] as a ``size``-cubed one, with scikit-image (linear, anti-aliased).

    Without ``target_spacing`` the whole volume is stretched to the cube (as
    MedMNIST3D was made). With it, the volume is first resampled to isotropic
    voxels of that many mm (``spacing``: the file's (z, y, x) mm), then centre
    cropped or padded (with 0) to the cube, so that every voxel of every file is
    the same physical size and the cube covers ``size * target_spacing`` mm.
    """
    from skimage.transform import resize as sk_resize

    vol = np.asarray(vol, dtype=np.float32)
    if target_spacing is None:
        shape = (size, size, size)
    else:
        if spacing is None or len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise MedclsError(f"{where}: --volume-spacing needs the voxel spacing, and the file gives none")
        shape = tuple(max(1, int(round(n * float(sp) / target_spacing))) for n, sp in zip(vol.shape, spacing))
        if int(np.prod(shape, dtype=np.int64)) > MAX_RESAMPLED_VOXELS:
            raise MedclsError(f"{where}: at {target_spacing:g} mm its {' x '.join(map(str, vol.shape))} voxels of "
                              f"{' x '.join(f'{float(s):g}' for s in spacing)} mm would become "
                              f"{' x '.join(map(str, shape))}, more than medcls resamples; choose a coarser "
                              "--volume-spacing")
    if vol.shape != shape:
        vol = sk_resize(vol, shape, order=1, mode="edge", anti_aliasing=any(a > b for a, b in zip(vol.shape, shape)),
                        preserve_range=True).astype(np.float32)
    if target_spacing is None:
        return vol
    out = np.zeros((size, size, size), np.float32)
    src, dst = [], []
    for n in vol.shape:  # centre crop (n > size) or pad (n < size) on each axis
        a = max(0, (n - size) // 2)
        b = max(0, (size - n) // 2)
        m = min(n, size)
        src.append(slice(a, a + m))
        dst.append(slice(b, b + m))
    out[tuple(dst)] = vol[tuple(src)]
    return out


MR_NORMS = ("percentile", "zscore")


@dataclass
class Preparation:
    """How raw pixels become model input; saved with every run and reused by ``predict``.

    The defaults are what a radiologist reading each modality would expect: an
    X-ray in the window its modality chose (stored in the file), an ultrasound
    cropped to its scan sector (burnt-in text, rulers and logos outside it are
    shortcuts a network learns instead of the anatomy), a CT in Hounsfield
    units through a soft-tissue (abdomen) window, an MRI scaled by the
    percentiles of the body alone (MR intensities have no absolute unit and
    the background is noise), volumes as axial slices.

    Attributes:
        modality: ``auto`` (each file's own, from its header; PNG/JPEG are
            ``other``), or a family from :data:`FAMILIES` for every file.
        size: output height and width.
        channels: model input channels (grey repeated, colour kept, CT windows
            or 2.5-D slices as channels).
        ct_windows: CT windows, one per channel, from :data:`HU_WINDOWS`.
        use_file_window: X-ray / other: use the DICOM window when the file has one.
        clahe: X-ray: contrast-limited adaptive histogram equalisation after windowing.
        crop: ultrasound: crop to the scan sector; ``None``: yes (the default above).
        mr_norm: MRI: ``percentile`` (1st-99th of the body to [0, 1]) or ``zscore``
            (of the body, -3 to +3 sd to [0, 1]).
        volume_axis: volumes: slice axis (0 axial, 1 coronal, 2 sagittal).
        volume_mode: ``slices``, ``2.5d`` (each slice with its neighbours as
            channels), or the whole volume as one item: ``acs`` / ``3d`` (for the
            ACS and 3-D networks), resized to ``size`` cubed.
        volume_spacing: ``acs`` / ``3d``: resample to isotropic voxels of this
            many mm and centre crop/pad to the cube; ``None``: stretch the whole
            volume to the cube.
    """

    modality: str = "auto"
    size: int = 28
    channels: int = 1
    ct_windows: tuple[str, ...] = ("abdomen",)
    use_file_window: bool = True
    clahe: bool = False
    crop: bool | None = None
    mr_norm: str = "percentile"
    volume_axis: int = 0
    volume_mode: str = "slices"
    volume_spacing: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ct_windows = tuple(self.ct_windows)
        if self.modality != "auto" and self.modality not in FAMILIES:
            raise MedclsError(f"modality must be auto or one of {', '.join(FAMILIES)}, not {self.modality!r}")
        unknown = [n for n in self.ct_windows if n not in HU_WINDOWS]
        if unknown or not self.ct_windows:
            raise MedclsError(f"unknown CT window(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                              f"choose from {', '.join(HU_WINDOWS)}")
        if self.mr_norm not in MR_NORMS:
            raise MedclsError(f"MRI normalisation must be percentile or zscore, not {self.mr_norm!r}")
        if self.volume_axis not in VOLUME_AXES.values():
            raise MedclsError(f"volume axis must be 0 (axial), 1 (coronal) or 2 (sagittal), not {self.volume_axis!r}")
        if self.volume_mode not in VOLUME_MODES:
            raise MedclsError(f"volume mode must be one of {', '.join(VOLUME_MODES)}, not {self.volume_mode!r}")
        if self.volume_spacing is not None and not (0 < float(self.volume_spacing) <= 100):
            raise MedclsError(f"volume spacing must be from 0 to 100 mm, not {self.volume_spacing!r}")
        if int(self.size) < 1 or int(self.channels) < 1:
            raise MedclsError(f"size and channels must be at least 1, got {self.size} and {self.channels}")

    @property
    def whole_volume(self) -> bool:
        """Volumes are one item each (ACS / 3-D networks), not slices."""
        return self.volume_mode in WHOLE_VOLUME_MODES

    @property
    def crops_ultrasound(self) -> bool:
        return True if self.crop is None else bool(self.crop)

    def family_of(self, code: str) -> str:
        """The family a file of DICOM modality ``code`` is prepared as."""
        return self.modality if self.modality != "auto" else modality_family(code)

    def describe(self, family: str, volume: bool = False) -> str:
        """What :func:`prepare` does to an image of ``family``, in words (for ``medcls info`` / ``data``)."""
        if family == "ct":
            wins = ", ".join(f"{n} ({HU_WINDOWS[n][0]:g}/{HU_WINDOWS[n][1]:g})" for n in self.ct_windows)
            what = f"HU window{'s' if len(self.ct_windows) > 1 else ''} {wins}"
        elif family == "mr":
            what = ("1st-99th percentile of the body to [0, 1]" if self.mr_norm == "percentile"
                    else "z-score over the body, -3 to +3 sd to [0, 1]")
        elif family == "us":
            what = "as stored" + (", cropped to the scan sector" if self.crops_ultrasound else "")
        else:
            what = ("the file's window, else " if self.use_file_window else "") + "the 0.5-99.5 percentile window"
            what += ", CLAHE" if family == "xray" and self.clahe else ""
        what += f"; {self.size}x{self.size}, {self.channels} channel{'s' if self.channels > 1 else ''}"
        if volume or self.whole_volume:
            axis = {v: k for k, v in VOLUME_AXES.items()}[self.volume_axis]
            if self.whole_volume:
                what = what.replace(f"; {self.size}x{self.size},", f"; {self.size}^3,")
                how = f"resampled to {self.volume_spacing:g} mm, centred" if self.volume_spacing else "resized whole"
                what += f"; volumes whole for {'ACS' if self.volume_mode == 'acs' else '3-D'} networks ({how})"
            else:
                what += f"; volumes as {axis} {'2.5-D stacks' if self.volume_mode == '2.5d' else 'slices'}"
        return f"{family}: {what}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ct_windows"] = list(self.ct_windows)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preparation":
        d = dict(d)
        d["ct_windows"] = tuple(d.get("ct_windows", ("abdomen",)))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PrepOptions:
    """The preparation a user chooses (``medcls train`` / ``classical`` options), before size and channels.

    ``ct_windows`` None means the default (abdomen); ``us_crop`` None means crop;
    ``volume_axis`` is a name from :data:`VOLUME_AXES`.
    """

    modality: str = "auto"
    ct_windows: tuple[str, ...] | None = None
    file_window: bool = True
    clahe: bool = False
    us_crop: bool | None = None
    mr_norm: str = "percentile"
    volume_axis: str = "axial"

    def __post_init__(self) -> None:
        if self.volume_axis not in VOLUME_AXES:
            raise MedclsError(f"volume axis must be axial, coronal or sagittal, not {self.volume_axis!r}")
        self.preparation(28)  # every other value is checked by Preparation

    @property
    def axis(self) -> int:
        return VOLUME_AXES[self.volume_axis]

    def preparation(self, size: int, channels: int | None = None, volume_mode: str = "slices",
                    volume_spacing: float | None = None) -> Preparation:
        """The :class:`Preparation` of image files; ``channels`` defaults to one per CT window."""
        windows = tuple(self.ct_windows) if self.ct_windows else ("abdomen",)
        return Preparation(modality=self.modality, size=size, channels=channels or len(windows), ct_windows=windows,
                           use_file_window=self.file_window, clahe=self.clahe, crop=self.us_crop,
                           mr_norm=self.mr_norm, volume_axis=self.axis, volume_mode=volume_mode,
                           volume_spacing=volume_spacing)

    @property
    def pixel_options(self) -> list[str]:
        """The options given that change how image files' pixels are prepared (as command-line flags)."""
        given = {"--ct-windows": self.ct_windows is not None, "--no-file-window": not self.file_window,
                 "--clahe": self.clahe, "--us-crop/--no-us-crop": self.us_crop is not None,
                 "--mr-norm": self.mr_norm != "percentile"}
        return [k for k, v in given.items() if v]


def _prepare_2d(img: np.ndarray, meta_window, family: str, prep: Preparation) -> np.ndarray:
    """One 2-D image (grey ``(H, W)`` or RGB ``(H, W, 3)``) -> ``(C, size, size)`` in [0, 1]."""
    colour = img.ndim == 3 and img.shape[-1] == 3
    if colour:
        x = np.asarray(img, dtype=np.float32) / (255.0 if img.dtype == np.uint8 or img.max() > 1 else 1.0)
        if family == "us" and prep.crops_ultrasound:
            x = crop_to_content(x)
        x = resize(x, prep.size)
        if prep.channels == 3:
            return np.moveaxis(x, -1, 0)
        return to_grey(x)[None]
    if family == "ct":
        chans = ct_windows(img, prep.ct_windows)
        chans = np.stack([resize(c, prep.size) for c in chans])
    else:
        x = _grey_01(img, meta_window, family, prep)
        if family == "xray" and prep.clahe:
            x = clahe(x)
        if family == "us" and prep.crops_ultrasound:
            x = crop_to_content(x)
        chans = resize(x, prep.size)[None]
    if chans.shape[0] == prep.channels:
        return chans
    if chans.shape[0] == 1:
        return np.repeat(chans, prep.channels, axis=0)
    if prep.channels == 1:
        return chans.mean(0, keepdims=True)
    raise MedclsError(f"preparation makes {chans.shape[0]} channels but the model takes {prep.channels}")


def _grey_01(img: np.ndarray, meta_window, family: str, prep: Preparation) -> np.ndarray:
    """A grey image (not CT) to [0, 1] as its family is normalised, before any crop or resize."""
    if family == "mr":
        return percentile_in_body(img) if prep.mr_norm == "percentile" else _squash(zscore_in_body(img))
    if prep.use_file_window and meta_window is not None:
        return window(img, *meta_window)
    if img.dtype == np.uint8:
        return np.asarray(img, dtype=np.float32) / 255.0
    return percentile_window(img)


def for_display(img: np.ndarray, meta_window, family: str,
                prep: Preparation) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """One 2-D image as a reader knows it, in [0, 1] at its own size, and the box training cropped to.

    The display is what :func:`prepare` computes before cropping and resizing
    (a CT in its first HU window, an X-ray in its window, without CLAHE); the box
    ``(row0, col0, row1, col1)`` is the ultrasound scan sector the model saw, or
    ``None`` when it saw the whole image. A map at the model's input size
    resized into that box lies on the file's own pixel grid.
    """
    colour = img.ndim == 3 and img.shape[-1] == 3
    if colour:
        x = np.asarray(img, dtype=np.float32) / (255.0 if img.dtype == np.uint8 or img.max() > 1 else 1.0)
    elif family == "ct":
        x = window(img, *HU_WINDOWS[prep.ct_windows[0]])
    else:
        x = _grey_01(img, meta_window, family, prep)
    box = content_box(x) if family == "us" and prep.crops_ultrasound else None
    return np.clip(x, 0, 1), box


def _squash(z: np.ndarray) -> np.ndarray:
    """z-scores to [0, 1]: -3 sd -> 0, +3 sd -> 1."""
    return np.clip((z + 3.0) / 6.0, 0.0, 1.0)


def _volume_01(vol: np.ndarray, family: str, prep: Preparation, where: str) -> np.ndarray:
    """A volume normalised as its family is, to [0, 1]: ``(C, Z, Y, X)`` (CT: one channel per window)."""
    if family == "ct":
        return ct_windows(vol, prep.ct_windows)
    if family == "mr":
        return (percentile_in_body(vol) if prep.mr_norm == "percentile" else _squash(zscore_in_body(vol)))[None]
    return percentile_window(vol)[None]


def _prepare_whole_volume(vol: np.ndarray, meta, family: str, prep: Preparation) -> np.ndarray:
    """One ``(Z, Y, X)`` volume -> ``(1, C, size, size, size)``: the input of an ACS or 3-D network."""
    where = str(getattr(meta, "path", "volume"))
    chans = _volume_01(vol, family, prep, where)
    spacing = getattr(meta, "spacing", None)
    out = np.stack([resize_volume(c, prep.size, spacing, prep.volume_spacing, where) for c in chans])
    if out.shape[0] != prep.channels:
        if out.shape[0] == 1:
            out = np.repeat(out, prep.channels, axis=0)
        elif prep.channels == 1:
            out = out.mean(0, keepdims=True)
        else:
            raise MedclsError(f"{where}: preparation makes {out.shape[0]} channels but the model takes "
                              f"{prep.channels}")
    return np.clip(out, 0, 1)[None].astype(np.float32)


def prepare(array: np.ndarray, meta, prep: Preparation) -> np.ndarray:
    """What :func:`medcls.io.read` returned -> model input ``(N, C, size, size)`` float32 in [0, 1].

    A 2-D image gives N = 1; multi-frame files give one item per frame; volumes give
    one item per slice along ``prep.volume_axis`` (2.5-D stacks neighbours as channels);
    a 4-D volume (a time series such as fMRI or DCE, ``(T, Z, Y, X)``) gives every
    slice of every time point, time point by time point. With a whole-volume mode
    (``acs`` / ``3d``) a volume is one item ``(1, C, size, size, size)`` (a time
    series one per time point), and a 2-D image is refused.
    """
    volume = getattr(meta, "is_volume", False)
    if prep.whole_volume and not (volume and array.ndim in (3, 4)):
        raise ReadError(getattr(meta, "path", "image"), f"a 2-D image, but this preparation is for volumes "
                        f"({prep.volume_mode} networks take a volume: a NIfTI file or a DICOM series folder)")
    if volume and array.ndim == 4:
        return np.concatenate([prepare(v, meta, prep) for v in array])
    family = prep.family_of(getattr(meta, "modality", "OT"))
    win = getattr(meta, "window", None)
    if prep.whole_volume:
        return _prepare_whole_volume(array, meta, family, prep)
    if volume and array.ndim == 3:
        if prep.volume_mode == "2.5d":
            k = max(1, prep.channels // 2)
            vol = array
            if family == "ct":
                if len(prep.ct_windows) > 1:
                    raise MedclsError(f"{getattr(meta, 'path', 'volume')}: 2.5-D stacks put neighbouring slices in "
                                      "the channels, so they take one CT window; use --volume-mode slices for "
                                      f"several ({', '.join(prep.ct_windows)})")
                vol = window(vol, *HU_WINDOWS[prep.ct_windows[0]])
            elif family == "mr":
                vol = percentile_in_body(vol) if prep.mr_norm == "percentile" else _squash(zscore_in_body(vol))
            else:
                vol = percentile_window(vol)
            stacks = slices_25d(vol, prep.volume_axis, k)  # (N, 2k+1, H, W)
            out = np.stack([np.stack([resize(c, prep.size) for c in s]) for s in stacks])
            return out[:, : prep.channels] if out.shape[1] >= prep.channels else out
        items = list(volume_slices(array, prep.volume_axis))
    elif getattr(meta, "frames", 1) > 1 and array.ndim >= 3:
        items = list(array)
    else:
        items = [array]
    return np.stack([_prepare_2d(i, win, family, prep) for i in items]).astype(np.float32)
