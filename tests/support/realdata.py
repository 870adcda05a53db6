"""Real data the tests read: COCO photos and their captions (located in support.paths) and the VinVL
label map shipped in the package."""
import json
import os

from vinvl.assets import LABELMAP_PATH as LABELMAP

from support.paths import CAPTIONS_FILE, PHOTO_DIR

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
