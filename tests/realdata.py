"""Real data the tests read: COCO photos and captions and the VinVL label map (all shipped in the
package, vinvl/assets), and the tiny detector config that reads the photos."""
import json
import os

from vinvl.assets import DEMO_CAPTIONS_PATH, DEMO_PHOTOS_DIR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS_FILE = DEMO_CAPTIONS_PATH
LABELMAP = os.path.join(REPO, "vinvl", "assets", "vinvl_labelmap.json")
TINY_DETECTOR = os.path.join(REPO, "model_configs", "vinvl-detector-tiny")  # config only: seeded random weights
PHOTO_DIR = DEMO_PHOTOS_DIR
GALLERY_PHOTOS = ["COCO_val2014_000000045057.jpg", "COCO_val2014_000000317441.jpg", "COCO_val2014_000000415746.jpg"]
QUERY_PHOTO = os.path.join(PHOTO_DIR, "COCO_val2014_000000507921.jpg")  # not among GALLERY_PHOTOS
OTHER_PHOTO = os.path.join(PHOTO_DIR, "COCO_val2014_000000213008.jpg")


def read_captions() -> list:
    """All captions of coco_minitest (the lines after an image-path line, until a blank line)."""
    captions = []
    with open(CAPTIONS_FILE, encoding="utf-8") as handle:
        for block in handle.read().split("\n\n"):
            lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
            captions.extend(lines[1:])
    return captions


def labelmap_names() -> tuple:
    """(class names, attribute names) of the VinVL label map."""
    with open(LABELMAP, encoding="utf-8") as handle:
        labelmap = json.load(handle)
    return list(labelmap["idx_to_label"].values()), list(labelmap["idx_to_attribute"].values())
