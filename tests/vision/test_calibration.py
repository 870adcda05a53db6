"""The detector's int8 on the tiny detector: the ONNX graphs equal Paddle's in fp32, a calibration
gives int8 within its documented tolerance of fp32 (docs/detector.md, "Precision") and measurably
not fp32, and a missing, stale or misplaced calibration is refused."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from vinvl.assets import resolve_config
from vinvl.errors import UsageError, UserError
from vinvl.onnx_runtime import onnx_runner, paddle_to_onnx
from vinvl.oscar.calibration import StaleCalibrationError
from vinvl.precision import cpu_flags
from vinvl.vision.agreement import compare_detections
from vinvl.vision.calibration import calibrate_detector, sample_photos
from vinvl.vision.config import DetectorConfig
from vinvl.vision.image import load_image
from vinvl.vision.inference import CALIBRATION_DIR, GRAPH_FILES, InferenceDetector, load_detector

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY
from support.precision import assert_detector_gate

pytest.importorskip("onnxruntime")
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
pytestmark = pytest.mark.skipif(not INT8_FLAGS & cpu_flags(), reason="this CPU has no int8 instructions")

CALIBRATION_PHOTOS = [os.path.join(PHOTO_DIR, f"COCO_val2014_000000{n}.jpg") for n in ("028675", "131089", "163852")]
TEST_PHOTOS = [os.path.join(PHOTO_DIR, f"COCO_val2014_000000{n}.jpg") for n in ("045057", "317441", "415746")]
# The documented gate on the tiny detector (docs/detector.md): int8 against fp32 on Paddle Inference.
INT8_MATCHED = 0.85
INT8_FEATURE_ERROR = 0.1
# Below this, "int8" ran in fp32: quantized convolutions move the features by ~1e-2.
INT8_FEATURE_ERROR_FLOOR = 1e-3


@pytest.fixture(scope="module")
def photos():
    return [load_image(p) for p in TEST_PHOTOS]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A copy of the tiny detector's config, calibrated on three photos other than the test photos."""
    path = str(tmp_path_factory.mktemp("calibrated") / "detector")
    shutil.copytree(TINY, path)
    calibrate_detector(path, CALIBRATION_PHOTOS, "three test photos", progress=False)
    return path


def test_the_onnx_graphs_compute_what_the_paddle_graphs_compute(photos, tmp_path):
    # paddle2onnx drops roi_align's aligned=False; without the mended coordinate mode the box head's
    # pooled features moved by 30% (vinvl.onnx_runtime.paddle_to_onnx).
    detector = load_detector(TINY, "fp32", runtime="inference")
    paddle_graphs, feeds = dict(detector.graphs), {}

    def recording(name):
        def run(*arrays):
            feeds.setdefault(name, arrays)
            return paddle_graphs[name](*arrays)
        return run

    detector.graphs.update({name: recording(name) for name in ("body", "box_head")})
    detector.detect(photos[:1])
    assert sorted(feeds) == ["body", "box_head"]
    for name, arrays in feeds.items():
        path = str(tmp_path / f"{name}.onnx")
        paddle_to_onnx(os.path.join(detector.export_dir, name), path)
        outputs, expected = onnx_runner(path, 2)(arrays), paddle_graphs[name](*arrays)
        assert len(outputs) == len(expected), name
        for got, want in zip(outputs, expected):
            assert got.shape == want.shape, name
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=name)


def test_int8_is_within_its_tolerance_of_fp32_and_is_not_fp32(calibrated, photos):
    reference = load_detector(calibrated, "fp32", runtime="inference").detect(photos)
    detector = load_detector(calibrated, "int8")
    assert isinstance(detector, InferenceDetector) and detector.precision == "int8"
    agreement = compare_detections(reference, detector.detect(photos))
    assert agreement.reference_boxes > 50
    assert_detector_gate(agreement, INT8_MATCHED, INT8_FEATURE_ERROR, INT8_FEATURE_ERROR_FLOOR, "int8")


def test_the_calibration_quantizes_the_convolutions_and_records_its_detector(calibrated):
    import onnx

    folder = os.path.join(calibrated, CALIBRATION_DIR)
    assert sorted(os.listdir(folder)) == sorted([*GRAPH_FILES.values(), "manifest.json"])
    for name in ("body", "box_head"):
        ops = [node.op_type for node in onnx.load(os.path.join(folder, GRAPH_FILES[name])).graph.node]
        assert ops.count("QuantizeLinear") >= ops.count("Conv") > 0, name  # every convolution's input quantized
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    assert manifest["photos"] == 3 and manifest["source"] == "three test photos"
    assert len(manifest["detector_sha256"]) == 64


def test_int8_without_a_calibration_is_refused_naming_the_command(tmp_path):
    path = str(tmp_path / "detector")
    shutil.copytree(TINY, path)
    with pytest.raises(UsageError, match=r"has no int8 calibration .*vinvl calibrate-detector PHOTOS --detector"):
        load_detector(path, "int8")


def test_a_calibration_for_another_config_is_refused(calibrated, tmp_path):
    path = str(tmp_path / "detector")
    shutil.copytree(calibrated, path)
    load_detector(path, "int8")  # the copy's config is the one calibrated
    DetectorConfig.from_dir(path).apply_overrides(["MODEL.ROI_HEADS.SCORE_THRESH", "0.3"]).save(path)
    with pytest.raises(StaleCalibrationError, match=r"manifest.json: the int8 calibration was made for another config"):
        load_detector(path, "int8")


def test_int8_is_refused_on_a_cpu_without_its_instructions(tmp_path):
    with pytest.raises(UsageError, match=r"precision 'int8' needs a CPU with one of the instructions"):
        load_detector(str(tmp_path / "no-such-detector"), "int8", flags=frozenset({"avx2", "avx512f"}))


def test_a_shipped_config_is_not_calibrated_in_place():
    for path in (resolve_config("vinvl-detector-tiny"), TINY):  # TINY: the same folder through the repository's link
        with pytest.raises(UsageError, match=r"shipped inside the package"):
            calibrate_detector(path, CALIBRATION_PHOTOS, "photos", progress=False)
        assert not os.path.exists(os.path.join(path, CALIBRATION_DIR))


def test_the_sample_is_seeded_and_a_bad_photo_is_named_before_loading(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in TEST_PHOTOS:
        shutil.copy(path, folder)
    first, again = sample_photos(str(folder), 2, seed=1), sample_photos(str(folder), 2, seed=1)
    assert first == again and len(first) == 2
    assert len(sample_photos(str(folder), 10)) == 3  # all of them when fewer are listed
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"broken.jpg"):
        sample_photos(str(folder), 10)
