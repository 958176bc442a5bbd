"""PNG / JPEG / TIFF / BMP with Pillow: 8- and 16-bit, grey and colour."""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from medcls.errors import ReadError
from medcls.io.limits import check_pixels, require_regular_file
from medcls.io.meta import ImageMeta

__all__ = ["read_raster", "RASTER_SUFFIXES"]

RASTER_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".tif": "tiff", ".tiff": "tiff", ".bmp": "bmp"}

_GUARD_LOCK = threading.Lock()


def _frame_to_array(im) -> tuple[np.ndarray, str, int]:
    mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8), "MONOCHROME2", 8
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(im, dtype=np.uint16).copy(), "MONOCHROME2", 16
    if mode == "I":
        a = np.asarray(im, dtype=np.int32)
        return (a.astype(np.uint16) if a.min() >= 0 and a.max() < 65536 else a), "MONOCHROME2", 16
    if mode == "F":
        return np.asarray(im, dtype=np.float32), "MONOCHROME2", 32
    if mode == "LA":
        return np.asarray(im.convert("L"), dtype=np.uint8), "MONOCHROME2", 8
    # RGB, RGBA (alpha dropped), P (palette), CMYK, YCbCr...
    return np.asarray(im.convert("RGB"), dtype=np.uint8), "RGB", 8


def read_raster(path: str | Path) -> tuple[np.ndarray, ImageMeta]:
    """Read a raster image; multi-page TIFFs come back frames first.

    Returns:
        ``(array, meta)``: ``(H, W)`` uint8/uint16 grey or ``(H, W, 3)`` uint8 RGB;
        rows are the image rows (no transposition).
    """
    from PIL import Image, ImageSequence, UnidentifiedImageError

    path = Path(path)
    require_regular_file(path)
    try:
        # Pillow's own bomb guard (a warning above MAX_IMAGE_PIXELS, an error above twice that) gives way
        # to medcls's budget, checked from the header just below: opening decodes nothing
        with _GUARD_LOCK:  # the guard is process-wide: threads (the service) take turns lifting it
            guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im_ctx = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = guard
        with im_ctx as im:
            fmt = (im.format or RASTER_SUFFIXES.get(path.suffix.lower(), "raster")).lower()
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            check_pixels(path, im.width * im.height * len(im.getbands()) * n_frames,
                         f"its header's {im.width} x {im.height} pixels x {len(im.getbands())} band(s) x "
                         f"{n_frames} frame(s)")
            frames = []
            photometric, bits = "MONOCHROME2", 8
            for frame in ImageSequence.Iterator(im):
                a, photometric, bits = _frame_to_array(frame)
                frames.append(a)
            dpi = im.info.get("dpi")
    except UnidentifiedImageError as exc:
        with open(path, "rb") as fh:
            magic = fh.read(8)
        if magic.startswith((b"\x89PNG", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")):
            raise ReadError(path, "corrupt or truncated image (header unreadable)") from exc
        raise ReadError(path, "not an image Pillow can identify (PNG/JPEG/TIFF/BMP expected)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error,
            zlib.error) as exc:
        raise ReadError(path, f"corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    if not frames:
        raise ReadError(path, "image has no frames")
    arr = frames[0] if len(frames) == 1 else np.stack(frames)
    spacing = None
    if dpi and all(float(d) > 1 for d in dpi[:2]) and tuple(dpi[:2]) != (72, 72):
        spacing = (25.4 / float(dpi[1]), 25.4 / float(dpi[0]))
    return arr, ImageMeta(
        path=str(path),
        format=fmt if fmt != "mpo" else "jpeg",
        shape=tuple(arr.shape),
        frames=len(frames),
        spacing=spacing,
        photometric=photometric,
        bits=bits,
        channels=3 if photometric == "RGB" else 1,
    )
