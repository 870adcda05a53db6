"""The tiny detector on Paddle Inference: fp32 equal to dygraph, bf16 within its documented tolerance
(docs/detector.md, "Precision") and measurably not fp32, refusals, and the stamped export."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from vinvl.errors import UsageError
from vinvl.precision import cpu_flags
from vinvl.vision.agreement import compare_detections
from vinvl.vision.config import DetectorConfig
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.inference import EXPORT_DIR, InferenceDetector, load_detector

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY
from support.precision import assert_detector_gate

PHOTOS = [os.path.join(PHOTO_DIR, f"COCO_val2014_000000{n}.jpg") for n in ("045057", "317441", "415746")]
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
needs_bf16 = pytest.mark.skipif(not BF16_FLAGS & cpu_flags(), reason="this CPU has no bf16 instructions")

# The documented gates on the tiny detector (docs/detector.md): fp32 on Paddle Inference against dygraph,
# bf16 against fp32.
FP32_FEATURE_ERROR = 1e-5
BF16_MATCHED = 0.95
BF16_FEATURE_ERROR = 2e-2
# Below this, "bf16" ran in fp32: bf16 keeps 8 bits of mantissa, so its features differ by ~1e-3.
BF16_FEATURE_ERROR_FLOOR = 1e-4


@pytest.fixture(scope="module")
def photos():
    return [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]


@pytest.fixture(scope="module")
def dygraph_results(photos):
    return VinVLDetector.from_pretrained(TINY).detect(photos)


@pytest.fixture(scope="module")
def fp32_results(photos):
    detector = load_detector(TINY, "fp32", runtime="inference")
    assert isinstance(detector, InferenceDetector)
    return detector.detect(photos)


def test_fp32_on_paddle_inference_equals_dygraph(dygraph_results, fp32_results):
    agreement = compare_detections(dygraph_results, fp32_results)
    assert agreement.reference_boxes > 50
    assert agreement.all_matched, agreement.summary()
    assert agreement.worst_feature_error() < FP32_FEATURE_ERROR, agreement.summary()
    for ref, got in zip(dygraph_results, fp32_results):
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-3)
        np.testing.assert_allclose(got.scores, ref.scores, rtol=1e-4, atol=1e-6)


def test_fp32_on_paddle_inference_equals_dygraph_with_box_regression_and_without_attributes(photos, tmp_path):
    # The graphs' other outputs: per-class box deltas (then the kept boxes are pooled again for the
    # attributes), and no attribute graph at all.
    for overrides in (["TEST.IGNORE_BOX_REGRESSION", "false"], ["MODEL.ATTRIBUTE_ON", "false"]):
        path = str(tmp_path / overrides[0])
        os.makedirs(path)
        DetectorConfig.from_dir(TINY).apply_overrides(overrides).save(path)
        reference = VinVLDetector.from_pretrained(path).detect(photos[:1])
        agreement = compare_detections(reference, load_detector(path, "fp32", runtime="inference").detect(photos[:1]))
        assert agreement.reference_boxes > 10 and agreement.all_matched, (overrides, agreement.summary())
        assert agreement.worst_feature_error() < FP32_FEATURE_ERROR, (overrides, agreement.summary())


@needs_bf16
def test_bf16_is_within_its_tolerance_of_fp32_and_is_not_fp32(photos, fp32_results):
    detector = load_detector(TINY, "bf16")
    assert isinstance(detector, InferenceDetector)
    agreement = compare_detections(fp32_results, detector.detect(photos))
    assert_detector_gate(agreement, BF16_MATCHED, BF16_FEATURE_ERROR, BF16_FEATURE_ERROR_FLOOR, "bf16")


def test_a_precision_the_cpu_lacks_is_refused_before_loading(tmp_path):
    missing = str(tmp_path / "no-such-detector")
    lacking = r"precision 'bf16' needs a CPU with one of the instructions amx_bf16, avx512_bf16"
    with pytest.raises(UsageError, match=lacking):
        load_detector(missing, "bf16", flags=frozenset({"avx2", "avx512f"}))
    with pytest.raises(UsageError, match=r"precision must be one of fp32, bf16, int8, got 'fp16'"):
        load_detector(missing, "fp16")


@needs_bf16
def test_a_detector_with_weights_keeps_its_export_stamped_and_exports_again_when_they_change(tmp_path):
    path = str(VinVLDetector.from_pretrained(TINY).save_pretrained(str(tmp_path / "detector")))
    load_detector(path, "bf16")
    export = os.path.join(path, EXPORT_DIR)
    stamp = open(os.path.join(export, "weights.sha256")).read()
    graph_mtime = os.stat(os.path.join(export, "body.pdiparams")).st_mtime_ns
    load_detector(path, "fp32", runtime="inference")
    assert os.stat(os.path.join(export, "body.pdiparams")).st_mtime_ns == graph_mtime  # reused, not exported again

    retrained = VinVLDetector.from_pretrained(TINY).init_weights(seed=1)
    retrained.save_pretrained(path)
    load_detector(path, "bf16")
    assert open(os.path.join(export, "weights.sha256")).read() != stamp
    assert sorted(n for n in os.listdir(path) if n.startswith(".")) == []  # no half-written export left
