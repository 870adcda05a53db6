"""Where the tests find the source tree, the tiny configs and the fixture data.

The COCO photos and their captions ship in the package (vinvl/assets/coco_minitest, see
vinvl.assets) and are named here only, so moving them is a one-line change."""
import os

from vinvl.assets import DEMO_CAPTIONS_PATH, DEMO_PHOTOS_DIR

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_MODEL = os.path.join(REPO, "model_configs", "tiny")  # config only: seeded random weights
TINY_DETECTOR = os.path.join(REPO, "model_configs", "vinvl-detector-tiny")  # config only: seeded random weights
PHOTO_DIR = DEMO_PHOTOS_DIR  # ten COCO val2014 photos
CAPTIONS_FILE = DEMO_CAPTIONS_PATH  # their captions
