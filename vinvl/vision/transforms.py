"""Image -> network input, as maskrcnn_benchmark's test transforms do it.

Resize so the short side is ``INPUT.MIN_SIZE_TEST`` unless the long side would exceed
``INPUT.MAX_SIZE_TEST`` (sizes truncated to ints as the official ``Resize.get_size``), with PIL's
bilinear filter (it antialiases when shrinking; OpenCV's INTER_LINEAR does not and differs by up to
17 grey levels), then RGB -> BGR in [0, 255] and the config's pixel mean and std. One image per
batch: the official config runs one, and zero-padding a batch changes the results.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
from PIL import Image


def resized_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """The ``(height, width)`` the official test ``Resize`` gives an image of ``height`` x ``width``."""
    size = min_size
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_image(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """RGB uint8 ``HxWx3`` resized with PIL bilinear to :func:`resized_size`."""
    height, width = image.shape[:2]
    out_h, out_w = resized_size(height, width, min_size, max_size)
    if (out_h, out_w) == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((out_w, out_h), Image.BILINEAR))


def normalize(image: np.ndarray, pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> np.ndarray:
    """RGB uint8 ``HxWx3`` -> float32 ``3xHxW`` BGR, mean-subtracted and std-divided.

    The arithmetic follows torchvision's ``to_tensor`` (x / 255) then ``* 255`` and ``normalize``,
    in float32, so the network sees the same numbers as the official pipeline.
    """
    chw = image[:, :, ::-1].transpose(2, 0, 1).astype(np.float32)
    chw = chw / np.float32(255) * np.float32(255)
    mean = np.asarray(pixel_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(pixel_std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((chw - mean) / std)


def check_image(image: np.ndarray, index: int, min_size: int, max_size: int) -> None:
    """Refuse anything but an RGB uint8 ``HxWx3`` array that resizes to at least one pixel, naming its position."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"image {index}: expected an RGB uint8 HxWx3 array, got {dtype} with shape {shape}")
    height, width = image.shape[:2]
    if min(height, width) < 1 or min(resized_size(height, width, min_size, max_size)) < 1:
        raise ValueError(f"image {index}: a {height}x{width} image is too thin to resize to at most {max_size} pixels")
