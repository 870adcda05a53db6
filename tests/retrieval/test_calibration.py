"""Static int8 calibrated on a sample of the gallery (vinvl.retrieval.calibration,
vinvl.oscar.calibration): it runs the calibrated graph (constant activation scales, not the
dynamic path's per-batch ones) within its documented tolerance of fp32 and measurably apart from
both fp32 and dynamic int8; its manifest records the weights' checksum; a calibration made for
other weights is refused; an interrupted calibration leaves the previous one (or none) whole.
The model is the wide-drawn tiny model of support.precision."""
import os
import shutil

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)

from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.oscar import calibration as stored
from vinvl.oscar.inference import load_scorer
from vinvl.oscar.model_dir import weights_checksum
from vinvl.retrieval import Gallery, RetrievalEngine
from vinvl.retrieval.calibration import calibrate, calibration_pairs

from support.precision import FP32_LIKE, assert_within_tolerance, save_wide_model, skip_unless_supported
from support.tinymodel import derive

TEST_IMAGES = 24
PAIRS = 128


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model_dir calibrated on its gallery, gallery, fp32 margins, dynamic int8 margins [images, captions])."""
    skip_unless_supported("int8")
    root = tmp_path_factory.mktemp("calibration")
    write_synthetic_corpus(str(root / "corpus"), {"train": 0, "minival": 0, "val": 0, "test": TEST_IMAGES}, seed=5)
    gallery = Gallery.from_corpus(load_corpus(str(root / "corpus"), "test"))
    model_dir = save_wide_model(root / "model")
    reference = runtime_scores(model_dir, gallery)[1]
    dynamic_scorer, dynamic = runtime_scores(model_dir, gallery, "int8")
    assert dynamic_scorer.int8_mode == "dynamic"
    calibrate(model_dir, gallery, PAIRS, source="the test gallery")
    return model_dir, gallery, reference, dynamic


def runtime_scores(model_dir, gallery, precision="fp32"):
    scorer, processor = load_scorer(model_dir, precision)
    return scorer, RetrievalEngine(scorer, processor, progress=False).exhaustive(gallery).i2t


def test_static_int8_within_its_tolerance_apart_from_fp32_and_dynamic(setup):
    model_dir, gallery, reference, dynamic = setup
    scorer, static = runtime_scores(model_dir, gallery, "int8")
    assert scorer.int8_mode == "static"
    assert scorer.onnx_path == os.path.join(model_dir, stored.CALIBRATION_DIR, stored.GRAPH_FILE)
    assert_within_tolerance(static, reference, "int8 static", reference.std())
    assert np.abs(static - dynamic).max() / reference.std() > FP32_LIKE  # not the dynamic graph


def test_static_graph_quantizes_activations_at_constant_scales(setup):
    import onnx

    model_dir, _, _, _ = setup
    scorer, _ = load_scorer(model_dir, "int8")
    graph = onnx.load(scorer.onnx_path).graph
    constants = {tensor.name for tensor in graph.initializer}
    quantize = [node for node in graph.node if node.op_type == "QuantizeLinear"]
    assert quantize and all(node.input[1] in constants and node.input[2] in constants for node in quantize)
    assert not [node for node in graph.node if node.op_type == "DynamicQuantizeLinear"]
    # the encoder's 6 MatMuls per layer take dequantized int8 weights; the others stay fp32
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert len(weights) == 6 * scorer.config.num_hidden_layers


def test_manifest_records_the_weights_checksum(setup):
    model_dir, gallery, _, _ = setup
    manifest = stored.read_manifest(model_dir)
    assert manifest["weights_sha256"] == weights_checksum(model_dir)
    assert manifest["pairs"] == PAIRS and manifest["images"] == gallery.num_images
    assert manifest["gallery"] == "the test gallery" and "min-max" in manifest["method"] and manifest["created"]


def test_calibration_for_other_weights_refused(setup, tmp_path):
    model_dir, _, _, _ = setup
    own = derive(model_dir, str(tmp_path / "model"))  # the calibration is copied with the weights
    assert load_scorer(own, "int8")[0].int8_mode == "static"
    derive(own, own, logit_scale=3.0)
    manifest = os.path.join(own, stored.CALIBRATION_DIR, stored.MANIFEST_FILE)
    with pytest.raises(stored.StaleCalibrationError, match="vinvl calibrate") as refused:
        load_scorer(own, "int8")
    assert manifest in str(refused.value)


@pytest.mark.parametrize("earlier", [True, False], ids=["over-a-calibration", "first"])
def test_interrupted_calibration_leaves_nothing_half_written(setup, tmp_path, monkeypatch, earlier):
    from onnxruntime import quantization

    model_dir, gallery, _, _ = setup
    own = derive(model_dir, str(tmp_path / "model"))
    calibration_dir = os.path.join(own, stored.CALIBRATION_DIR)
    if earlier:
        calibrate(own, gallery, PAIRS)
        before = {name: open(os.path.join(calibration_dir, name), "rb").read() for name in os.listdir(calibration_dir)}
    else:
        shutil.rmtree(calibration_dir)

    def interrupted(model_input, model_output, *args, **kwargs):
        with open(model_output, "wb") as f:
            f.write(b"half a graph")
        raise KeyboardInterrupt

    monkeypatch.setattr(quantization, "quantize_static", interrupted)
    with pytest.raises(KeyboardInterrupt):
        calibrate(own, gallery, PAIRS)
    assert not [name for name in os.listdir(own) if name.startswith(".")]  # no work directory left
    if earlier:
        after = {name: open(os.path.join(calibration_dir, name), "rb").read() for name in os.listdir(calibration_dir)}
        assert after == before
    else:
        assert not os.path.exists(calibration_dir)


def test_calibration_pairs_half_matching(setup):
    _, gallery, _, _ = setup
    images, captions = calibration_pairs(gallery, 40, seed=1)
    matching = gallery.caption_to_image[captions] == images
    assert len(images) == 40 and matching.sum() == 20
    assert len(set(captions[matching])) == 20  # distinct captions
    np.testing.assert_array_equal(calibration_pairs(gallery, 40, seed=1)[1], captions)  # the seed decides
