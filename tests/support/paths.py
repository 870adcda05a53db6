"""Where the tests find the source tree, the tiny configs and the fixture data.

The COCO photos and their captions are named here only, so moving them is a one-line change."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_MODEL = os.path.join(REPO, "model_configs", "tiny")  # config only: seeded random weights
TINY_DETECTOR = os.path.join(REPO, "model_configs", "vinvl-detector-tiny")  # config only: seeded random weights
PHOTO_DIR = os.path.join(REPO, "tests", "data", "coco_minitest")  # ten COCO val2014 photos
CAPTIONS_FILE = os.path.join(REPO, "tests", "data", "coco_minitest_captions.txt")  # their captions
