"""``vinvl calibrate-detector``: int8 for a detector calibrated on a sample of photos, its manifest
printed and stored beside the detector, then run by ``vinvl extract --precision int8``; bad input
is refused in one line with status 2 before anything is written."""
import json
import os
import shutil

import pytest

from vinvl import precision as precision_module
from vinvl.vision.inference import CALIBRATION_DIR

from support.commands import assert_user_error, run, vinvl_cmd, vinvl_here
from support.paths import PHOTO_DIR, TINY_DETECTOR
from support.precision import skip_unless_supported

PHOTOS = ("COCO_val2014_000000045057.jpg", "COCO_val2014_000000317441.jpg", "COCO_val2014_000000415746.jpg")


@pytest.fixture
def detector(tmp_path):
    skip_unless_supported("int8")
    path = tmp_path / "detector"
    shutil.copytree(TINY_DETECTOR, path)
    return str(path)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in PHOTOS:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder)
    return str(folder)


def test_calibrate_then_extract_at_int8(tmp_path, detector, photos):
    done = run(vinvl_cmd("calibrate-detector", photos, "--detector", detector, "--photos", "2", "--no_progress"), tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)
    assert manifest["photos"] == 2 and photos in manifest["source"] and "seed 0" in manifest["source"]
    assert json.load(open(os.path.join(detector, CALIBRATION_DIR, "manifest.json"))) == manifest
    assert f"calibration: {os.path.join(detector, CALIBRATION_DIR)}" in done.stderr
    done = run(vinvl_cmd("extract", photos, "out", "--detector", detector, "--precision", "int8", "--no_progress"), tmp_path)
    assert done.returncode == 0 and "extracted 3 of 3 images" in done.stdout, done.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--photos", "0"], "--photos must be positive"),
    (["PHOTOS_MISSING"], "no such folder or list file"),
    (["BROKEN"], "broken.jpg"),
    (["--detector", "vinvl-detector-tiny"], "shipped inside the package"),
    (["--detector", "no-such-detector"], "--detector no-such-detector"),
])
def test_bad_input_is_refused_before_anything_is_written(capfd, tmp_path, detector, photos, args, fragment):
    given = {"images": photos, "--detector": detector}
    if "BROKEN" in args:
        with open(os.path.join(photos, "broken.jpg"), "wb") as f:
            f.write(b"not a jpeg")
    for token in args:
        if token in ("PHOTOS_MISSING", "BROKEN"):
            given["images"] = str(tmp_path / "missing") if token == "PHOTOS_MISSING" else photos
    for flag, value in zip(args[::2], args[1::2]):
        given[flag] = value
    argv = [given.pop("images")] + [token for pair in given.items() for token in pair]
    done = vinvl_here(capfd, tmp_path, "calibrate-detector", *argv)
    assert_user_error(done, "vinvl calibrate-detector", fragment)
    assert not os.path.exists(os.path.join(detector, CALIBRATION_DIR))


def test_a_cpu_without_int8_instructions_is_refused(capfd, tmp_path, monkeypatch, photos):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    done = vinvl_here(capfd, tmp_path, "calibrate-detector", photos, "--detector", str(tmp_path / "anything"))
    assert_user_error(done, "vinvl calibrate-detector", "precision 'int8' needs a CPU with one of the instructions")
