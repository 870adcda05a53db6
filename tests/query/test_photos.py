"""Photo queries and photo galleries at the detector's bf16 precision (vinvl.query.photos): the
detector runs in bf16 (its answers are near fp32's, not equal), the gallery cache keeps bf16 apart
from fp32, and a precision the CPU lacks is refused before any photo is read."""
import json
import os
import shutil

import pytest

from vinvl import precision as precision_module
from vinvl.errors import UsageError
from vinvl.precision import cpu_flags
from vinvl.query.photos import ImageQueries, gallery_cache_dir, photo_gallery
from vinvl.vision.extract import SUMMARY_FILE

from support.paths import PHOTO_DIR, TINY_DETECTOR as DETECTOR
from support.precision import assert_bf16_regions
from support.realdata import GALLERY_PHOTOS, QUERY_PHOTO

needs_bf16 = pytest.mark.skipif(
    not {"avx512_bf16", "amx_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions"
)


@needs_bf16
def test_a_bf16_photo_query_is_near_the_fp32_one_and_not_it():
    fp32 = ImageQueries(DETECTOR).resolve([QUERY_PHOTO])[0]
    bf16 = ImageQueries(DETECTOR, "bf16").resolve([QUERY_PHOTO])[0]
    assert len(bf16["tags"]) > 0 and bf16["features"].shape == fp32["features"].shape
    assert_bf16_regions(bf16["features"], fp32["features"])


@needs_bf16
def test_a_bf16_gallery_is_extracted_and_cached_apart_from_fp32(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in GALLERY_PHOTOS:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    cache = str(tmp_path / "cache")
    gallery = photo_gallery(str(folder), ImageQueries(DETECTOR, "bf16"), cache, progress=False)
    assert len(gallery.image_ids) == len(GALLERY_PHOTOS)
    assert gallery.cache_dir == gallery_cache_dir(str(folder), DETECTOR, cache, "bf16")
    assert gallery.cache_dir != gallery_cache_dir(str(folder), DETECTOR, cache)
    assert json.load(open(os.path.join(gallery.cache_dir, SUMMARY_FILE)))["precision"] == "bf16"


def test_a_precision_the_cpu_lacks_is_refused_before_any_photo(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2"}))
    lacking = "precision 'bf16' needs a CPU with one of the instructions amx_bf16, avx512_bf16"
    with pytest.raises(UsageError, match=lacking):
        ImageQueries(DETECTOR, "bf16")
    with pytest.raises(UsageError, match="precision 'int8' needs a CPU with one of the instructions"):
        ImageQueries(DETECTOR, "int8")
    with pytest.raises(UsageError, match="precision must be one of fp32, bf16, int8, got 'fp16'"):
        ImageQueries(DETECTOR, "fp16")
