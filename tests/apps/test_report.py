"""The report's photos: an extraction read back and drawn as the photo with the detector's boxes.
The expected boxes come from the tiny detector run directly in the test, scaled to the thumbnail."""
import base64
import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from vinvl.apps.report import extraction_figures, write_report
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.extract import extract
from vinvl.vision.image import load_image

from support.paths import PHOTO_DIR, TINY_DETECTOR as DETECTOR

PHOTOS = ["COCO_val2014_000000045057.jpg", "COCO_val2014_000000507921.jpg"]  # square and portrait
MAX_BOXES = 4


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    folder = root / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    extract(str(folder), str(root / "out"), DETECTOR, progress=False)
    return extraction_figures(str(root / "out"), str(folder), max_boxes=MAX_BOXES)


def test_each_photo_is_drawn_with_the_boxes_the_detector_found(figures):
    detector = VinVLDetector.from_pretrained(DETECTOR)
    assert len(figures) == len(PHOTOS)
    for figure, name in zip(figures, PHOTOS):
        image = load_image(os.path.join(PHOTO_DIR, name))
        detections = detector.detect([image])[0]
        height, width = image.shape[:2]
        scale = 320 / max(height, width)
        thumb_w, thumb_h = round(width * scale), round(height * scale)
        svg = figure["visual"]
        data = re.search(r'href="data:image/jpeg;base64,([^"]+)"', svg).group(1)
        with Image.open(io.BytesIO(base64.b64decode(data))) as thumbnail:
            assert thumbnail.size == (thumb_w, thumb_h)
        rects = np.array([[float(v) for v in m] for m in re.findall(
            r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)"', svg)])
        boxes = detections.boxes[:MAX_BOXES].astype(np.float64)
        expected = np.stack([boxes[:, 0] / width * thumb_w, boxes[:, 1] / height * thumb_h,
                             (boxes[:, 2] - boxes[:, 0]) / width * thumb_w, (boxes[:, 3] - boxes[:, 1]) / height * thumb_h], 1)
        np.testing.assert_allclose(rects, expected, atol=0.051)
        assert re.findall(r'font-size="9" fill="[^"]+">([^<]*)</text>', svg) == detections.class_names[:MAX_BOXES]
        assert figure["label"].startswith(f"{os.path.splitext(name)[0]}: {len(detections)} regions, the first {MAX_BOXES}")


def test_the_report_shows_the_photos_under_their_note(figures, tmp_path):
    note = "The tiny detector is untrained: its boxes carry no meaning."
    path = write_report(str(tmp_path / "report.html"), title="t", metrics={},
                        photos={"title": "Photos", "note": note, "items": figures})
    html = open(path, encoding="utf-8").read()
    assert f'<h2>Photos</h2><p class="warning">{note}</p>' in html
    assert html.count("<figure>") == len(PHOTOS) and html.count("data:image/jpeg;base64,") == len(PHOTOS)
