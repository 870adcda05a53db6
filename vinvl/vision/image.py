"""Images in: a file, its bytes, a PIL image or an array, decoded to the RGB uint8 array the detector reads.

What is converted and what is refused:

- Converted (a good image in another form): EXIF orientation is applied (a phone photo stored
  sideways comes out upright); grayscale, palette, bilevel and CMYK become RGB; an alpha channel
  is dropped, as the official pipeline's ``cv2.imread`` drops it; 16-bit samples keep their
  high byte (``value >> 8``, the scaling ``cv2.imread`` applies to 8-bit colour).
- Refused with :class:`BadImageError`, whose message names the file: a file that is not an image,
  an image format other than JPEG or PNG, truncated or corrupt image data, more pixels than
  PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 megapixels unless changed;
  checked from the header, before any pixel is decoded), a side shorter than ``MIN_SIDE``
  pixels, or sides more than ``MAX_ASPECT`` times apart (the detector scales the long side to at
  most 1000 pixels, which would leave almost nothing of the short side).
"""
from __future__ import annotations

import io
import os
from typing import Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "READ_FORMATS",
    "MIN_SIDE",
    "MAX_ASPECT",
    "BadImageError",
    "ImageSource",
    "check_header",
    "load_image",
    "to_rgb_array",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what a folder scan picks up (any letter case)
READ_FORMATS = ("JPEG", "MPO", "PNG")  # PIL format names accepted (MPO: multi-picture JPEG from cameras)
MIN_SIDE = 16
MAX_ASPECT = 30.0
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

ImageSource = Union[str, "os.PathLike[str]", bytes, Image.Image, np.ndarray]


class BadImageError(UserError, ValueError):
    """An image that cannot be used: ``source`` names it, ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    return f"<array {getattr(source, 'shape', '?')}>"


def _check_size(width: int, height: int, name: str) -> None:
    """Refuse sizes the detector cannot use: too many pixels, a tiny side, an extreme aspect ratio."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        raise BadImageError(
            name, f"{width}x{height} is {width * height / 1e6:.1f} megapixels, above the decompression-bomb "
            f"limit of {limit / 1e6:.1f} (PIL.Image.MAX_IMAGE_PIXELS)"
        )
    if min(width, height) < MIN_SIDE:
        raise BadImageError(name, f"{width}x{height} is too small (each side must be at least {MIN_SIDE} pixels)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise BadImageError(name, f"{width}x{height}: the sides are more than {MAX_ASPECT:g} times apart")


def _is_empty(source: Union[str, "os.PathLike[str]", bytes]) -> bool:
    """Whether ``source`` (a path or bytes) holds no byte at all."""
    if isinstance(source, bytes):
        return not source
    try:
        return os.path.getsize(source) == 0
    except OSError:
        return False


def _open(source: Union[str, "os.PathLike[str]", bytes], name: str) -> Image.Image:
    """The image opened lazily (header read, no pixels), its format and size checked."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError as exc:
        raise BadImageError(name, "no such file") from exc
    except IsADirectoryError as exc:
        raise BadImageError(name, "is a directory, not an image file") from exc
    except PermissionError as exc:
        raise BadImageError(name, "cannot be read (permission denied)") from exc
    except UnidentifiedImageError as exc:
        if _is_empty(source):
            raise BadImageError(name, "the file is empty (0 bytes)") from exc
        raise BadImageError(name, "not an image (PIL cannot identify the format)") from exc
    except Image.DecompressionBombError as exc:
        raise BadImageError(name, f"above the decompression-bomb limit ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's plugins raise these for a malformed header
        raise BadImageError(name, f"unreadable image header ({exc})") from exc
    try:
        if image.format not in READ_FORMATS:
            raise BadImageError(name, f"{image.format} images are not read (JPEG and PNG are)")
        _check_size(image.width, image.height, name)
    except BadImageError:
        image.close()
        raise
    return image


def check_header(source: Union[str, "os.PathLike[str]", bytes]) -> Tuple[int, int]:
    """(height, width) of an image file (or its bytes) from its header alone; :class:`BadImageError` if it is refused.

    Cheap (no pixel is decoded), so a whole list can be checked before long work starts; data
    truncated after the header is only found by :func:`load_image`.
    """
    name = _describe(source)
    with _open(source, name) as image:
        return image.height, image.width


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says; unchanged when the EXIF block is unreadable."""
    try:
        return ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):  # a broken EXIF block: pixels are fine
        return image


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from a decoded PIL image of any mode (see the module docstring)."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.uint32)
        gray = np.right_shift(np.clip(values, 0, 65535), 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if image.mode == "F":
        raise BadImageError(_describe(image), "floating-point images are not read")
    if image.mode != "RGB":
        image = image.convert("RGB")  # drops alpha; L/P/1/CMYK/YCbCr to RGB
    return np.asarray(image, dtype=np.uint8).copy()


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise BadImageError(name, f"expected a uint8 array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim != 3 or array.shape[2] != 3:
        raise BadImageError(name, f"expected an HxWx3 RGB array (or HxW gray, HxWx4 RGBA), got shape {array.shape}")
    _check_size(array.shape[1], array.shape[0], name)
    return np.ascontiguousarray(array)


def load_image(source: ImageSource) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from a file path, encoded bytes, a PIL image or an array.

    Raises :class:`BadImageError` naming the source when it is refused (see the module docstring).
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        return _array_to_rgb(source, name)
    if isinstance(source, Image.Image):
        _check_size(source.width, source.height, name)
        return to_rgb_array(_upright(source))
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise TypeError(f"an image is a path, bytes, a PIL image or an array, got {type(source).__name__}")
    with _open(source, name) as image:
        try:
            image.load()
        except Image.DecompressionBombError as exc:
            raise BadImageError(name, f"above the decompression-bomb limit ({exc})") from exc
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise BadImageError(name, f"truncated or corrupt image data ({exc})") from exc
        try:
            return to_rgb_array(_upright(image))
        except BadImageError as exc:
            raise BadImageError(name, exc.reason) from exc
