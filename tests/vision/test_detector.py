"""The tiny detector end to end on real COCO photos, and the detector's config and directory handling."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from vinvl.assets import LABELMAP_PATH as LABELMAP
from vinvl.vision.config import DetectorConfig, DetectorConfigError
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.structures import Detections

from support.paths import PHOTO_DIR, REPO, TINY_DETECTOR as TINY

X152 = os.path.join(REPO, "model_configs", "vinvl-detector-x152c4")
PHOTOS = [os.path.join(PHOTO_DIR, f"COCO_val2014_000000{n}.jpg") for n in ("045057", "317441")]


@pytest.fixture(scope="module")
def photos():
    assert len(PHOTOS) == 2
    return [np.asarray(Image.open(p).convert("RGB")) for p in PHOTOS]


@pytest.fixture(scope="module")
def tiny():
    return VinVLDetector.from_pretrained(TINY)


@pytest.fixture(scope="module")
def tiny_results(tiny, photos):
    return tiny.detect(photos)


def _tiny_with(*overrides: str) -> VinVLDetector:
    return VinVLDetector(DetectorConfig.from_dir(TINY).apply_overrides(list(overrides))).init_weights()


def _check_contract(result: Detections, image: np.ndarray, attr_threshold: float = 0.05) -> None:
    with open(LABELMAP, encoding="utf-8") as handle:
        labelmap = json.load(handle)
    height, width = image.shape[:2]
    n = len(result)
    assert result.image_size == (height, width)
    assert 10 <= n <= 100
    assert result.boxes.shape == (n, 4) and result.boxes.dtype == np.float32
    assert (result.boxes >= 0).all() and (result.boxes[:, 0::2] <= width).all() and (result.boxes[:, 1::2] <= height).all()
    assert result.scores.dtype == np.float32 and (np.diff(result.scores) <= 0).all()
    assert result.labels.dtype == np.int64 and result.labels.min() >= 1 and result.labels.max() <= 1594
    assert result.class_names == [labelmap["idx_to_label"][str(j)] for j in result.labels]
    assert result.features.shape == (n, 2048) and result.features.dtype == np.float32
    assert np.isfinite(result.features).all()
    regions = result.region_features()
    assert regions.shape == (n, 2054) and regions.dtype == np.float32
    np.testing.assert_array_equal(regions[:, :2048], result.features)
    x1, y1, x2, y2 = result.boxes.T
    geometry = np.stack([x1 / width, y1 / height, x2 / width, y2 / height, (x2 - x1) / width, (y2 - y1) / height], 1)
    np.testing.assert_allclose(regions[:, 2048:], geometry, rtol=1e-6)
    assert len(result.attr_labels) == len(result.attr_scores) == len(result.attr_names) == n
    for labels, scores, names in zip(result.attr_labels, result.attr_scores, result.attr_names):
        assert labels.dtype == np.int64 and scores.dtype == np.float32 and len(labels) == len(scores) <= 16
        assert (scores > attr_threshold).all() and (np.diff(scores) <= 0).all() and (labels >= 1).all()
        assert names == [labelmap["idx_to_attribute"][str(a)] for a in labels]


def test_tiny_detector_on_real_photos_honours_the_contract(tiny_results, photos):
    assert len(tiny_results) == len(photos)
    for result, image in zip(tiny_results, photos):
        _check_contract(result, image)
    # two different photos give different detections
    assert not np.array_equal(tiny_results[0].features[:5], tiny_results[1].features[:5])


def test_min_detections_fallback_is_visible(photos, tiny_results):
    strict = _tiny_with("MODEL.ROI_HEADS.SCORE_THRESH", "0.999").detect(photos[:1])[0]
    assert len(strict) == 10 and (strict.scores < 0.999).all()
    # the fallback keeps the best 10 of what the normal threshold would keep, same weights
    np.testing.assert_array_equal(strict.boxes, tiny_results[0].boxes[:10])
    np.testing.assert_array_equal(strict.labels, tiny_results[0].labels[:10])


def test_detections_cap(photos):
    capped = _tiny_with("MODEL.ROI_HEADS.SCORE_THRESH", "0.0", "MODEL.ROI_HEADS.DETECTIONS_PER_IMG", "12").detect(photos[:1])[0]
    assert len(capped) == 12


@pytest.mark.parametrize(
    "overrides",
    [
        ("TEST.IGNORE_BOX_REGRESSION", "False"),
        ("TEST.IGNORE_BOX_REGRESSION", "False", "MODEL.CLS_AGNOSTIC_BBOX_REG", "True"),
        ("MODEL.ROI_ATTRIBUTE_HEAD.SHARE_BOX_FEATURE_EXTRACTOR", "False"),
        ("MODEL.ATTRIBUTE_ON", "False"),
    ],
)
def test_every_config_path_runs(photos, overrides):
    result = _tiny_with(*overrides).detect(photos[:1])[0]
    _check_contract(result, photos[0])
    if "MODEL.ATTRIBUTE_ON" in overrides:
        assert not any(len(labels) for labels in result.attr_labels)


def test_attributes_with_a_low_threshold_meet_the_per_image_cap(photos):
    """The untrained head spreads attribute scores thinly (~1/524): with threshold 0 every score is kept,
    so the per-image cap of 100 bites; its k-th value counts the N zeroed background scores, so
    N + 100 survive it (the official quirk), fewer than the 16 per box the per-object cap allows."""
    result = _tiny_with("MODEL.ROI_ATTRIBUTE_HEAD.POSTPROCESS_ATTRIBUTES_THRESHOLD", "0.0").detect(photos[:1])[0]
    _check_contract(result, photos[0], attr_threshold=0.0)
    total = sum(len(labels) for labels in result.attr_labels)
    assert 100 < total <= len(result) + 100 and total < 16 * len(result)


def test_shared_extractor_reuse_equals_repooling(tiny):
    """Reusing the box features for the attribute head (same boxes) gives what re-pooling them gives.

    On a 640x480 photo, whose rounded resized size makes the x and y ratios differ.
    """
    import paddle

    from vinvl.vision.transforms import normalize, resize_image

    config = tiny.config
    photo = np.asarray(Image.open(os.path.join(PHOTO_DIR, "COCO_val2014_000000028675.jpg")).convert("RGB"))
    resized = resize_image(photo, config["INPUT.MIN_SIZE_TEST"], config["INPUT.MAX_SIZE_TEST"])
    pixels = normalize(resized, config["INPUT.PIXEL_MEAN"], config["INPUT.PIXEL_STD"])
    result = tiny.detect([photo])[0]
    # back to the resized image, x and y each by its own ratio
    scale_y, scale_x = (np.float32(r / o) for r, o in zip(resized.shape[:2], photo.shape[:2]))
    scale = np.array([scale_x, scale_y, scale_x, scale_y], dtype=np.float32)
    with paddle.no_grad():
        features = tiny.backbone(paddle.to_tensor(pixels[None]))
        repooled = tiny.roi_heads.box.feature_extractor(features, result.boxes * scale).numpy()
    np.testing.assert_allclose(repooled, result.features, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_config_only_directory_is_seeded_and_save_round_trips(tiny, photos, tiny_results, tmp_path):
    first, again = tiny.weights(), VinVLDetector.from_pretrained(TINY).weights()
    assert first.keys() == again.keys()
    for name, value in first.items():
        np.testing.assert_array_equal(again[name], value)
    saved = VinVLDetector.from_pretrained(tiny.save_pretrained(str(tmp_path / "tiny")))
    result = saved.detect(photos[:1])[0]
    np.testing.assert_array_equal(result.boxes, tiny_results[0].boxes)
    np.testing.assert_array_equal(result.features, tiny_results[0].features)
    assert result.attr_names == tiny_results[0].attr_names


def test_bad_images_are_refused_naming_them(tiny, photos):
    with pytest.raises(ValueError, match="image 1"):
        tiny.detect([photos[0], photos[0][:, :, 0]])
    with pytest.raises(ValueError, match="image 0"):
        tiny.detect([photos[0].astype(np.float32)])
    # a 1 x 2000 strip would resize to 0 x 240 at the tiny config's max side 240
    with pytest.raises(ValueError, match="image 2: a 1x2000 image is too thin"):
        tiny.detect([photos[0], photos[1], np.zeros((1, 2000, 3), dtype=np.uint8)])
    # a 1 x 1 image is fine: it is scaled up to the short side
    assert tiny.detect([np.full((1, 1, 3), 128, dtype=np.uint8)])[0].image_size == (1, 1)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(DetectorConfigError, match="MODEL.RPN.NMS_TRESH"):
        DetectorConfig.from_dir(TINY).apply_overrides(["MODEL.RPN.NMS_TRESH", "0.5"])
    with pytest.raises(DetectorConfigError, match="NMS_FILTER"):
        DetectorConfig.from_dir(TINY).apply_overrides(["MODEL.ROI_HEADS.NMS_FILTER", "0"])
    with pytest.raises(DetectorConfigError, match="USE_FPN"):
        DetectorConfig.from_dir(TINY).apply_overrides(["MODEL.RPN.USE_FPN", "True"])
    with pytest.raises(DetectorConfigError, match="NUM_CLASSES"):
        _tiny_with("MODEL.ROI_BOX_HEAD.NUM_CLASSES", "81")
    with pytest.raises(DetectorConfigError, match="NUM_GROUPS"):
        DetectorConfig.from_dir(TINY).apply_overrides(["MODEL.RESNETS.NUM_GROUPS", "two"])


@pytest.mark.slow
def test_shipped_x152c4_config_is_vinvls_detector():
    config = DetectorConfig.from_dir(X152)
    assert config == DetectorConfig.vinvl_x152c4()
    assert config.block_counts() == [3, 8, 36, 3]
    detector = VinVLDetector(config)
    weights = detector.state_dict()
    # ResNeXt-152 32x8d: res4 has 36 blocks with 32 groups of 32 channels (8 x 4) in its 3x3 conv
    assert list(weights["backbone.body.layer3.35.conv2.weight"].shape) == [1024, 32, 3, 3]
    assert "backbone.body.layer3.36.conv1.weight" not in weights
    # STRIDE_IN_1X1 False: the stride sits in the 3x3 conv
    assert detector.backbone.body.layer2[0].conv1._stride == [1, 1]
    assert detector.backbone.body.layer2[0].conv2._stride == [2, 2]
    assert list(weights["roi_heads.box.feature_extractor.head.layer4.2.conv3.weight"].shape) == [2048, 2048, 1, 1]
    assert list(weights["roi_heads.box.predictor.cls_score.weight"].shape) == [2048, 1595]
    assert list(weights["attribute.predictor.attr_score.weight"].shape) == [512, 525]
    assert len(detector.rpn.cells) == 15  # 5 sizes x 3 aspect ratios


def test_official_yaml_sections_outside_the_pipeline_are_ignored_and_unimplemented_ones_refused(tmp_path):
    official = tmp_path / "official.yaml"
    official.write_text(
        "MODEL:\n  META_ARCHITECTURE: AttrRCNN\n  WEIGHT: pretrained_model/x.pth\n  BACKBONE:\n    CONV_BODY: R-152-C4\n"
        "  RESNETS:\n    STRIDE_IN_1X1: False\n    NUM_GROUPS: 32\n    WIDTH_PER_GROUP: 8\n"
        "  RPN:\n    PRE_NMS_TOP_N_TEST: 6000\n    POST_NMS_TOP_N_TEST: 300\n    USE_FPN: False\n"
        "  ROI_HEADS:\n    BATCH_SIZE_PER_IMAGE: 384\n    DETECTIONS_PER_IMG: 100\n    MIN_DETECTIONS_PER_IMG: 10\n"
        "  ROI_BOX_HEAD:\n    NUM_CLASSES: 1595\n  ROI_ATTRIBUTE_HEAD:\n    NUM_ATTRIBUTES: 525\n"
        "    POSTPROCESS_ATTRIBUTES_THRESHOLD: 0.05\n  ATTRIBUTE_ON: True\n"
        "INPUT:\n  MIN_SIZE_TEST: 600\n  MAX_SIZE_TEST: 1000\n  PIXEL_MEAN: [103.530, 116.280, 123.675]\n"
        "SOLVER:\n  BASE_LR: 0.01\nDATASETS:\n  TEST: ('visualgenome/test.yaml',)\nOUTPUT_DIR: ./output\n"
    )
    # the VinVL extraction settings come on top, as on the README's command line
    assert DetectorConfig.from_yaml(str(official)) == DetectorConfig.vinvl_x152c4()
    masks = tmp_path / "masks.yaml"
    masks.write_text(official.read_text().replace("  ATTRIBUTE_ON: True\n", "  ATTRIBUTE_ON: True\n  MASK_ON: True\n"))
    with pytest.raises(DetectorConfigError, match="MODEL.MASK_ON"):
        DetectorConfig.from_yaml(str(masks))
