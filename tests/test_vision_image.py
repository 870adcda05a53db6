"""Decoding: every odd form of a good photo becomes the right RGB uint8 array; every bad file is
refused with a message naming it. All files are generated here (PIL, or PNG bytes written by hand
where PIL cannot write the variant)."""
import functools
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from vinvl.vision.image import MAX_ASPECT, MIN_SIDE, BadImageError, check_header, load_image

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
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **save)
    return buffer.getvalue()


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def random_rgb(height: int = 48, width: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def bad_files() -> dict:
    """File name -> (bytes, a word the refusal must contain): the bad cases `vinvl extract` skips."""
    photo = jpeg_bytes(Image.fromarray(random_rgb(120, 160)))
    return {
        "truncated.jpg": (photo[: len(photo) // 2], "truncated"),
        "not_an_image.jpg": (b"these are not the pixels you are looking for\n", "not an image"),
        "empty.png": (b"", "the file is empty"),
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
        "rotated.jpg": (jpeg_bytes(Image.fromarray(random_rgb(30, 80)), exif=_orientation_exif(6)), None),
    }


def _orientation_exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("name", sorted(odd_good_files()))
def test_odd_formats_decode_to_rgb(tmp_path, name):
    data, expected = odd_good_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    array = load_image(str(path))
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3 and array.flags.c_contiguous
    if expected is not None:
        np.testing.assert_array_equal(array, expected)
    assert np.array_equal(load_image(data), array)  # bytes decode as the file does


def test_cmyk_becomes_the_right_colours(tmp_path):
    """Pure cyan, magenta and black CMYK JPEGs (Adobe's inverted storage) decode to their RGB colours."""
    for cmyk, rgb in (((255, 0, 0, 0), (0, 255, 255)), ((0, 255, 0, 0), (255, 0, 255)), ((0, 0, 0, 255), (0, 0, 0))):
        array = load_image(jpeg_bytes(Image.new("CMYK", (32, 32), cmyk)))
        assert np.abs(array.astype(int) - rgb).max() <= 3, (cmyk, array[0, 0])


@pytest.mark.parametrize("orientation, turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(tmp_path, orientation, turns):
    """The decoded image is the stored pixels turned as EXIF says (np.rot90 as the independent check)."""
    data = jpeg_bytes(Image.fromarray(random_rgb(30, 80)), exif=_orientation_exif(orientation))
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert stored.shape == (30, 80, 3)
    np.testing.assert_array_equal(load_image(data), np.rot90(stored, turns))


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bad_files_are_refused_naming_the_file(tmp_path, name):
    data, reason = bad_files()[name]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(BadImageError) as info:
        load_image(str(path))
    assert str(path) in str(info.value) and reason in str(info.value)
    assert info.value.source == str(path)


def test_size_limits_are_checked_from_the_header_alone(tmp_path):
    """A 400-megapixel bomb is refused in well under a second, and check_header reads sizes
    without decoding (a truncated file passes it; load_image then refuses the data)."""
    path = tmp_path / "huge.png"
    path.write_bytes(bomb_png_bytes())
    start = time.perf_counter()
    with pytest.raises(BadImageError, match="decompression-bomb"):
        check_header(str(path))
    assert time.perf_counter() - start < 1.0
    photo = jpeg_bytes(Image.fromarray(random_rgb(120, 160)))
    (tmp_path / "cut.jpg").write_bytes(photo[: len(photo) // 2])
    assert check_header(str(tmp_path / "cut.jpg")) == (120, 160)
    with pytest.raises(BadImageError, match="truncated"):
        load_image(str(tmp_path / "cut.jpg"))


def test_limits_at_their_edges():
    assert load_image(np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8)).shape == (MIN_SIDE, MIN_SIDE, 3)
    with pytest.raises(BadImageError, match="too small"):
        load_image(np.zeros((MIN_SIDE - 1, 100, 3), np.uint8))
    wide = int(MAX_ASPECT * 20)
    assert load_image(np.zeros((20, wide, 3), np.uint8)).shape == (20, wide, 3)
    with pytest.raises(BadImageError, match="times apart"):
        load_image(np.zeros((20, wide + 1, 3), np.uint8))


def test_other_formats_and_missing_files(tmp_path):
    for fmt in ("BMP", "GIF"):
        path = tmp_path / f"photo.{fmt.lower()}"
        Image.fromarray(random_rgb()).save(path, fmt)
        with pytest.raises(BadImageError, match=f"{fmt} images are not read"):
            load_image(str(path))
    with pytest.raises(BadImageError, match="no such file"):
        load_image(str(tmp_path / "missing.jpg"))
    with pytest.raises(BadImageError, match="is a directory"):
        load_image(str(tmp_path))


def test_arrays_and_pil_images():
    rgb = random_rgb()
    np.testing.assert_array_equal(load_image(rgb), rgb)
    np.testing.assert_array_equal(load_image(rgb[:, :, 0]), np.repeat(rgb[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb).convert("RGBA")), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb[:, :, 0])), np.repeat(rgb[:, :, :1], 3, axis=2))
    with pytest.raises(BadImageError, match="uint8"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(BadImageError, match="shape"):
        load_image(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(TypeError):
        load_image(12345)
