"""Photo files for the decoding and extraction tests, good and bad: odd forms of good photos with the
RGB array each must decode to, and the bad files `vinvl extract` must skip with the word its refusal
names. Written with PIL, or as PNG bytes written by hand where PIL cannot write the variant."""
import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows) -> bytes:
    """A PNG written by hand from an iterable of raw scanlines (filter byte 0 added here), compressed
    as it streams, so a huge image costs no memory."""
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(b"\x00" + row) for row in rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png16_bytes(array: np.ndarray) -> bytes:
    """A 16-bit PNG of a uint16 ``[H, W]`` (gray) or ``[H, W, 3]`` (RGB) array."""
    color_type = 0 if array.ndim == 2 else 2
    return png_bytes(array.shape[1], array.shape[0], 16, color_type, (row.astype(">u2").tobytes() for row in array))


def bomb_png_bytes(side: int = 20000) -> bytes:
    """A valid side x side bilevel PNG of zeros: ~60 KB on disk, 400 megapixels decoded."""
    row = bytes((side + 7) // 8)
    return png_bytes(side, side, 1, 0, (row for _ in range(side)))


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    """``image`` as JPEG file bytes (quality 95; ``save`` passes e.g. ``exif=``)."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def png_of(image: Image.Image) -> bytes:
    """``image`` as PNG file bytes, written by PIL."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def random_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    """Random RGB uint8 pixels from the module's seeded generator."""
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def bad_files() -> dict:
    """File name -> (bytes, a word the refusal must contain): the bad cases `vinvl extract` skips."""
    photo = jpeg_bytes(Image.fromarray(random_rgb(120, 160)))
    return {
        "truncated.jpg": (photo[: len(photo) // 2], "truncated"),
        "not_an_image.jpg": (b"these are not the pixels you are looking for\n", "not an image"),
        "empty.png": (b"", "not an image"),
        "one_pixel.png": (png_of(Image.new("RGB", (1, 1), (10, 20, 30))), "too small"),
        "huge.png": (bomb_png_bytes(), "decompression-bomb"),
    }


@functools.lru_cache(maxsize=None)
def odd_good_files() -> dict:
    """File name -> (bytes, the RGB array it must decode to, or None when only the shape is known)."""
    rgb = random_rgb()
    gray = RNG.integers(0, 256, (40, 50), dtype=np.uint8)
    rgba = np.concatenate([random_rgb(), RNG.integers(0, 256, (48, 64, 1), dtype=np.uint8)], axis=2)
    gray16 = RNG.integers(0, 65536, (36, 52), dtype=np.uint16)
    rgb16 = RNG.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    return {
        "rgb.png": (png_of(Image.fromarray(rgb)), rgb),
        "gray.png": (png_of(Image.fromarray(gray)), np.repeat(gray[:, :, None], 3, axis=2)),
        "alpha.png": (png_of(Image.fromarray(rgba)), rgba[:, :, :3]),
        "gray16.png": (png16_bytes(gray16), np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)),
        "rgb16.png": (png16_bytes(rgb16), (rgb16 >> 8).astype(np.uint8)),
        "cmyk.jpg": (jpeg_bytes(Image.new("CMYK", (40, 30), (255, 0, 0, 0))), None),
        "rotated.jpg": (jpeg_bytes(Image.fromarray(random_rgb(30, 80)), exif=orientation_exif(6)), None),
    }


def orientation_exif(orientation: int) -> bytes:
    """EXIF bytes holding only the orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()
