"""The demo's HTML report as a user reads it: the photos (an extraction read back and drawn as the photo
with the detector's boxes, the expected boxes from the tiny detector run directly in the test, scaled to
the thumbnail), box labels a reader can read, and a recall table and curves that say what they measured."""
import base64
import io
import os
import re
import shutil

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageFont

from vinvl.apps.report import extraction_figures, photo_svg, write_report
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.extract import extract
from vinvl.vision.image import load_image

from support.paths import PHOTO_DIR, TINY_DETECTOR as DETECTOR

PHOTOS = ["COCO_val2014_000000045057.jpg", "COCO_val2014_000000507921.jpg"]  # square and portrait
MAX_BOXES = 4
# A common sans-serif font to measure the labels' drawn extent with (matplotlib ships it).
SANS = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
RECALLS = {"t2i_r1": 6.0, "t2i_r5": 21.0, "t2i_r10": 35.0, "i2t_r1": 10.0, "i2t_r5": 30.0, "i2t_r10": 45.0, "rsum": 147.0}


def _labels(svg):
    """``(x, y, font size, text)`` of each ``<text>`` in ``svg`` (x, y: the baseline's start)."""
    found = re.findall(r'<text x="([\d.]+)" y="([\d.]+)" font-size="([\d.]+)"[^>]*>([^<]*)</text>', svg)
    return [(float(x), float(y), float(size), text) for x, y, size, text in found]


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
            r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="none"', svg)])
        boxes = detections.boxes[:MAX_BOXES].astype(np.float64)
        expected = np.stack([boxes[:, 0] / width * thumb_w, boxes[:, 1] / height * thumb_h,
                             (boxes[:, 2] - boxes[:, 0]) / width * thumb_w, (boxes[:, 3] - boxes[:, 1]) / height * thumb_h], 1)
        np.testing.assert_allclose(rects, expected, atol=0.051)
        assert [label for *_, label in _labels(svg)] == detections.class_names[:MAX_BOXES]
        assert figure["label"].startswith(f"{os.path.splitext(name)[0]}: {len(detections)} regions, the first {MAX_BOXES}")


def test_the_report_shows_the_photos_under_their_note(figures, tmp_path):
    note = "The tiny detector is untrained: its boxes carry no meaning."
    path = write_report(str(tmp_path / "report.html"), title="t", metrics={},
                        photos={"title": "Photos", "note": note, "items": figures})
    html = open(path, encoding="utf-8").read()
    assert f'<h2>Photos</h2><p class="warning">{note}</p>' in html
    assert html.count("<figure>") == len(PHOTOS) and html.count("data:image/jpeg;base64,") == len(PHOTOS)


def test_box_labels_are_readable_and_none_hides_another():
    # Ten boxes sharing a corner, as an untrained detector finds them: each label drawn where it would
    # land on the box's top-left corner covers the one before it.
    boxes = np.array([[0.10 + 0.01 * i, 0.10 + 0.01 * i, 0.50, 0.60] for i in range(10)])
    labels = ["person", "window", "building", "tree", "shirt", "man", "wall", "sign", "car", "sky"]
    svg = photo_svg(np.full((480, 640, 3), 128, np.uint8), boxes, labels)
    width, height = (int(v) for v in re.search(r'<svg width="(\d+)" height="(\d+)"', svg).groups())
    drawn = _labels(svg)
    assert [text for *_, text in drawn] == labels
    extents = []
    for x, y, size, text in drawn:
        assert size >= 12, f"{text!r} is drawn {size} px high: too small to read on a {width}-px photo"
        left, top, right, bottom = ImageFont.truetype(SANS, size).getbbox(text, anchor="ls")
        extents.append((text, x + left, y + top, x + right, y + bottom))
    for text, x1, y1, x2, y2 in extents:
        assert 0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height, f"{text!r} is drawn outside the photo"
    for i, (a, ax1, ay1, ax2, ay2) in enumerate(extents):
        for b, bx1, by1, bx2, by2 in extents[i + 1:]:
            assert min(ax2, bx2) <= max(ax1, bx1) or min(ay2, by2) <= max(ay1, by1), f"{a!r} and {b!r} overlap"


def test_the_recall_table_names_its_columns_and_says_what_it_measured(tmp_path):
    setting = "On the test split: 40 images and 200 captions."
    path = write_report(str(tmp_path / "report.html"), title="t", metrics_setting=setting,
                        metrics={"exhaustive": {**RECALLS, "pairs_scored": 320000.0}})
    page = open(path, encoding="utf-8").read()
    table = re.search(r'<table class="metrics">.*?</table>', page).group(0)
    headers = re.findall(r"<th[^>]*>([^<]*)</th>", table)
    assert {"text \u2192 image", "image \u2192 text", "R@1", "R@5", "R@10", "rsum", "pairs scored"} <= set(headers)
    assert not any(key in table for key in RECALLS if key != "rsum"), "raw metric keys as headers"
    assert "<td>320,000</td>" in table and "<td>6.0</td>" in table
    assert setting in page
    assert "rsum: the sum of the six recalls" in page


def test_the_recall_curves_say_which_split_and_setting_they_measured(tmp_path):
    history = [{"step": 10, "loss": 0.7}, {"step": 10, "eval_i2t_r1": 50.0, "eval_rsum": 150.0}]
    caption = "Recall measured while training, on the minival split (40 images), each image ranking its 20 listed captions."
    path = write_report(str(tmp_path / "report.html"), title="t", metrics={"exhaustive": RECALLS},
                        log_history=history, eval_title="minival, 40 images", eval_caption=caption)
    page = open(path, encoding="utf-8").read()
    assert re.search(r'<img alt="training curves" src="data:image/png;base64,[^"]+"><figcaption>' + re.escape(caption), page)


def test_notes_show_backquoted_commands_as_code(tmp_path):
    note = "Boxes found by `vinvl extract`; convert real weights with `vinvl convert-detector`."
    path = write_report(str(tmp_path / "report.html"), title="t", metrics={}, notes=[note],
                        photos={"title": "Photos", "note": note, "items": []})
    page = open(path, encoding="utf-8").read()
    assert "`" not in page
    assert page.count("<code>vinvl extract</code>") == 2 and page.count("<code>vinvl convert-detector</code>") == 2


def test_the_queries_say_what_their_score_is(tmp_path):
    note = "Score: the match head's probability that the caption describes the image."
    query = {"title": "caption -> images", "results": [{"label": "image 1", "score": 0.9, "correct": True, "visual": ""}]}
    path = write_report(str(tmp_path / "report.html"), title="t", metrics={}, queries=[query], queries_note=note)
    page = open(path, encoding="utf-8").read()
    assert f"<h2>Queries</h2><p>{note}</p>".replace("'", "&#x27;") in page
