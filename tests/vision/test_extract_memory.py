"""Memory: `vinvl extract` streams. Extracting three times as many images needs no more memory:
each image's decoded pixels, detections and row are released once its row is committed, and the
merge reads one row at a time.

Measured with tracemalloc (every Python object and numpy array, allocator-independent, so the
comparison is exact to a few KB), on the real tiny detector made to keep 100 boxes per image so
that holding any per-image data would show: each image's row is ~1.1 MB and its decoded photo 0.9 MB.
"""
import os
import tracemalloc

import pytest

from vinvl.vision.config import DetectorConfig
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.extract import PREDICTIONS_FILE, extract

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY

PHOTO = os.path.join(PHOTO_DIR, "COCO_val2014_000000317441.jpg")  # 640x480
FEW, MANY = 4, 12
BOUND = 3 * 2**20


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    """The tiny detector keeping 100 boxes per image (100 proposals, no score threshold)."""
    path = str(tmp_path_factory.mktemp("detector"))
    overrides = ["MODEL.RPN.POST_NMS_TOP_N_TEST", "100", "MODEL.ROI_HEADS.SCORE_THRESH", "0.0"]
    DetectorConfig.from_dir(TINY).apply_overrides(overrides).save(path)
    return path


def _traced_peak(detector, detector_dir, tmp_path, count):
    """Peak Python/numpy memory of extracting ``count`` copies of the photo; and the output's size."""
    folder = tmp_path / f"photos{count}"
    folder.mkdir()
    for i in range(count):
        os.symlink(PHOTO, folder / f"photo{i:03d}.jpg")
    out = tmp_path / f"out{count}"
    tracemalloc.start()
    try:
        summary = extract(str(folder), str(out), detector_dir, detector=detector, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary.num_extracted == count
    return peak, os.path.getsize(out / PREDICTIONS_FILE)


@pytest.mark.slow
def test_extraction_memory_does_not_grow_with_the_number_of_images(detector_dir, tmp_path):
    detector = VinVLDetector.from_pretrained(detector_dir)
    _traced_peak(detector, detector_dir, tmp_path, 2)  # warm-up: one-time allocations
    few, _ = _traced_peak(detector, detector_dir, tmp_path, FEW)
    many, size = _traced_peak(detector, detector_dir, tmp_path, MANY)
    extra_rows = (MANY - FEW) * size / MANY
    assert extra_rows > 2 * BOUND  # holding the extra images' rows alone would break the bound twice over
    growth = many - few
    assert growth < BOUND, (
        f"extracting {MANY} images peaked {growth / 2**20:.1f} MB above {FEW} images "
        f"(peaks {few / 2**20:.1f} and {many / 2**20:.1f} MB)"
    )
