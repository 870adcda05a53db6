"""``vinvl convert-detector``: an official-format checkpoint written with torch converts to the same detector."""
from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import yaml
from PIL import Image

from vinvl.commands.cli import main as vinvl_main
from vinvl.oscar.convert import ConversionError
from vinvl.vision.config import DetectorConfig, nest
from vinvl.vision.convert import convert_detector
from vinvl.vision.detector import VinVLDetector

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY

torch = pytest.importorskip("torch")

PHOTO = os.path.join(PHOTO_DIR, "COCO_val2014_000000317441.jpg")

# Official nn.Linear weights are [out, in]; the tiny config's sizes: 2048-d features, 1595 classes,
# 525 attributes, 16-d class embedding, 32-d attribute hidden layer.
OFFICIAL_LINEAR_SHAPES = {
    "roi_heads.box.predictor.cls_score.weight": (1595, 2048),
    "roi_heads.box.predictor.bbox_pred.weight": (1595 * 4, 2048),
    "attribute.predictor.fc_attr.weight": (32, 2048 + 16),
    "attribute.predictor.attr_score.weight": (525, 32),
}
# A few official names, spelled out (maskrcnn_benchmark's module tree).
OFFICIAL_NAMES = [
    "backbone.body.stem.conv1.weight",
    "backbone.body.stem.bn1.running_var",
    "backbone.body.layer1.0.downsample.0.weight",
    "backbone.body.layer3.0.conv2.weight",
    "rpn.head.conv.bias",
    "rpn.head.cls_logits.weight",
    "rpn.head.bbox_pred.weight",
    "roi_heads.box.feature_extractor.head.layer4.0.downsample.1.bias",
    "attribute.predictor.cls_embedding.weight",
]


@pytest.fixture(scope="module")
def source():
    """A tiny detector with its own random weights, and its config as an official yaml."""
    config = DetectorConfig.from_dir(TINY)
    return VinVLDetector(config).init_weights(seed=3)


@pytest.fixture(scope="module")
def photo():
    return np.asarray(Image.open(PHOTO).convert("RGB"))


def _official_state(model: VinVLDetector) -> "OrderedDict[str, torch.Tensor]":
    """The model's weights as scene_graph_benchmark saves them: torch tensors, [out, in] Linear weights,
    ``module.`` prefixes (DistributedDataParallel), the RPN's anchor buffer and the attribute head's
    copy of the shared box feature extractor."""
    state = OrderedDict()
    for name, value in model.weights().items():
        if name in OFFICIAL_LINEAR_SHAPES:
            value = value.T
            assert value.shape == OFFICIAL_LINEAR_SHAPES[name]
        state[name] = torch.from_numpy(np.ascontiguousarray(value))
    for name in OFFICIAL_NAMES:
        assert name in state
    for name in [n for n in state if n.startswith("roi_heads.box.feature_extractor.")]:
        state["attribute.feature_extractor." + name[len("roi_heads.box.feature_extractor.") :]] = state[name].clone()
    state["rpn.anchor_generator.cell_anchors.0"] = torch.from_numpy(model.rpn.cells.copy())
    return OrderedDict(("module." + k, v) for k, v in state.items())


def _write_checkpoint(tmp_path, state, legacy=False) -> str:
    path = str(tmp_path / ("legacy.pth" if legacy else "model_final.pth"))
    torch.save({"model": state, "iteration": 80000}, path, _use_new_zipfile_serialization=not legacy)
    return path


def _write_yaml(tmp_path, config: DetectorConfig) -> str:
    path = str(tmp_path / "tiny.yaml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(nest(config.to_dict()), handle)
    return path


@pytest.mark.slow
def test_converted_checkpoint_detects_like_the_model_it_came_from(source, photo, tmp_path):
    checkpoint = _write_checkpoint(tmp_path, _official_state(source))
    dst = str(tmp_path / "converted")
    assert vinvl_main(["convert-detector", checkpoint, dst, "--config", _write_yaml(tmp_path, source.config)]) == 0
    assert sorted(os.listdir(dst)) == ["config.json", "model.safetensors"]
    converted = VinVLDetector.from_pretrained(dst)
    assert converted.config == source.config
    ours, theirs = converted.detect([photo])[0], source.detect([photo])[0]
    np.testing.assert_array_equal(ours.boxes, theirs.boxes)
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    np.testing.assert_array_equal(ours.features, theirs.features)
    assert ours.attr_names == theirs.attr_names
    # and it is not the config-only (seed 0) detector
    assert not np.array_equal(VinVLDetector.from_pretrained(TINY).detect([photo])[0].features, ours.features)


def test_key_value_overrides_apply_on_top_of_the_yaml(source, tmp_path):
    checkpoint = _write_checkpoint(tmp_path, _official_state(source), legacy=True)
    dst = convert_detector(
        checkpoint,
        str(tmp_path / "converted"),
        config_file=_write_yaml(tmp_path, source.config),
        overrides=["MODEL.ROI_HEADS.SCORE_THRESH", "0.3"],
    )
    assert DetectorConfig.from_dir(dst)["MODEL.ROI_HEADS.SCORE_THRESH"] == 0.3


@pytest.mark.slow
def test_a_missing_tensor_is_named_and_nothing_is_written(source, tmp_path, capsys):
    state = _official_state(source)
    del state["module.rpn.head.cls_logits.bias"]
    del state["module.attribute.predictor.fc_attr.weight"]
    state["module.roi_heads.box.predictor.extra.weight"] = torch.zeros(3)
    checkpoint = _write_checkpoint(tmp_path, state, legacy=True)
    dst = tmp_path / "refused"
    yaml_file = _write_yaml(tmp_path, source.config)
    with pytest.raises(ConversionError) as info:
        convert_detector(checkpoint, str(dst), config_file=yaml_file)
    message = str(info.value)
    for name in ("rpn.head.cls_logits.bias", "attribute.predictor.fc_attr.weight", "roi_heads.box.predictor.extra.weight"):
        assert name in message
    assert not dst.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".refused")] == []
    assert vinvl_main(["convert-detector", checkpoint, str(dst), "--config", yaml_file]) == 2
    assert not dst.exists()
    assert capsys.readouterr().err.startswith("vinvl convert-detector: error: ") and "rpn.head.cls_logits.bias" in message


@pytest.mark.slow
def test_a_checkpoint_of_another_architecture_is_refused(source, tmp_path):
    checkpoint = _write_checkpoint(tmp_path, _official_state(source))
    # the default architecture is VinVL's X152-C4: every tiny tensor has the wrong shape or is missing
    with pytest.raises(ConversionError, match="backbone.body.layer3.35.conv1.weight"):
        convert_detector(checkpoint, str(tmp_path / "x152"))
    # anchors stored in the checkpoint must be the ones the config generates
    with pytest.raises(ConversionError, match="cell_anchors"):
        convert_detector(
            checkpoint,
            str(tmp_path / "anchors"),
            config_file=_write_yaml(tmp_path, source.config),
            overrides=["MODEL.RPN.ANCHOR_SIZES", "[64, 128, 256]"],
        )
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(ConversionError, match="notes.pth"):
        convert_detector(str(not_a_checkpoint), str(tmp_path / "x"))
