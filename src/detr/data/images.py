"""Reading image files: decode checks, EXIF orientation and conversion of any mode to 8-bit RGB.

EXIF orientation: annotation tools that people use today (and browsers since 2020) show the
image *after* applying its EXIF orientation, so boxes normally refer to the displayed image and
we apply the orientation. One case is decided from the data instead: when the orientation swaps
width and height (rotations by 90 degrees) and the annotation file's width/height match the
stored pixels but not the rotated image, the boxes were drawn on the stored pixels (as in the
original COCO tooling, which ignored EXIF), so the orientation is ignored and the scan reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError

EXIF_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # transpose, rotate 270, transverse, rotate 90
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}


@dataclass(frozen=True)
class ImageProbe:
    """What a full decode of one file found. Sizes are of the stored pixels, before EXIF."""

    width: int
    height: int
    mode: str
    orientation: int  # EXIF orientation 1..8 (1 = none or unreadable EXIF)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when absent or unreadable."""
    try:
        value = img.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block must not make a decodable image unusable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(probe: ImageProbe, apply_exif: bool) -> tuple[int, int]:
    """(width, height) of the image as the dataset returns it."""
    if apply_exif and probe.orientation in _SWAPS_AXES:
        return probe.height, probe.width
    return probe.width, probe.height


def decide_exif(probe: ImageProbe, json_size: tuple[int, int] | None) -> bool:
    """Whether to apply the EXIF orientation (see the module docstring for the rule)."""
    if probe.orientation == 1:
        return False
    if probe.orientation in _SWAPS_AXES and json_size is not None:
        stored = (probe.width, probe.height)
        if json_size == stored and json_size != (probe.height, probe.width):
            return False
    return True


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled, not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        else:
            scale = 1.0 / 257.0 if arr.size and arr.max() > 255 else 1.0  # 16-bit range -> 8-bit
        arr = np.nan_to_num(arr * scale, nan=0.0).clip(0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # palette transparency must go through RGBA first
    return img.convert("RGB")  # alpha is dropped, as torchvision and the official code do


def probe_image(path: Path, decode: bool = True) -> ImageProbe:
    """Fully decode `path` (JPEGs at reduced DCT scale, which still reads every byte; PNG CRCs checked).

    With `decode=False` only the header is read (fast, but a truncated file goes unnoticed).

    Raises:
        DatasetError: the file cannot be decoded or converted to RGB; the message says why.
    """
    try:
        with Image.open(path) as img:
            width, height, mode = img.width, img.height, img.mode
            orientation = exif_orientation(img)
            if not decode:
                return ImageProbe(width, height, mode, orientation)
            if img.format == "JPEG":
                img.draft(None, (max(1, width // 8), max(1, height // 8)))
            img.load()
            to_rgb(img)
            checksummed = img.format == "PNG"
        if checksummed:  # PNG chunks carry CRCs: a flipped byte decodes silently but fails here
            with Image.open(path) as img:
                img.verify()
    except Exception as e:  # PIL raises many exception types for bad files; all mean "unreadable"
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if width < 1 or height < 1:
        raise DatasetError(f"{path}: image has no pixels ({width}x{height})")
    return ImageProbe(width, height, mode, orientation)


def load_image(path: str | Path, apply_exif: bool = True) -> Image.Image:
    """Open an image file as 8-bit RGB, with its EXIF orientation applied unless told not to.

    Raises:
        DatasetError: the file cannot be read or decoded, naming the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if apply_exif:
                img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: image file not found") from e
    except Exception as e:
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
