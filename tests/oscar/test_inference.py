"""The match head on an inference runtime at fp32, bf16 and int8 (vinvl.oscar.inference), against
the dygraph model's exhaustive scores on a synthetic test split, with the wide-drawn tiny model of
support.precision. Each precision is held to its documented tolerance (the largest margin error
relative to the std of the fp32 margins) and a top-1 agreement floor (captions -> image and
images -> caption), and must show what it ran: bf16 its graph's bfloat16 matmuls on oneDNN, int8
exactly the encoder's MatMuls quantized; both differ measurably from fp32, so a scorer that
silently ran fp32 fails. fp16 runs only where a GPU is present."""
import os
import shutil

import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)

from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.errors import UsageError
from vinvl.oscar import inference
from vinvl.oscar.inference import load_scorer
from vinvl.precision import check_precision
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine

from support.precision import AVX2_ONLY, assert_within_tolerance, save_wide_model, skip_unless_supported
from support.tinymodel import derive

TEST_IMAGES = 24
# precision -> top-1 agreement with fp32 at least (measured on this model: docs/benchmarks.md)
TOP1 = {"fp32": 1.0, "bf16": 0.9, "int8": 0.75, "fp16": 0.9}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model_dir, gallery, dygraph exhaustive margins [images, captions])."""
    root = tmp_path_factory.mktemp("inference")
    write_synthetic_corpus(str(root / "corpus"), {"train": 8, "minival": 8, "val": 8, "test": TEST_IMAGES}, seed=5)
    gallery = Gallery.from_corpus(load_corpus(str(root / "corpus"), "test"))
    model_dir = save_wide_model(root / "model")
    model, processor = load_retrieval_model(model_dir)
    return model_dir, gallery, RetrievalEngine(model, processor, progress=False).exhaustive(gallery).i2t


def runtime_scores(model_dir, gallery, precision):
    scorer, processor = load_scorer(model_dir, precision)
    return scorer, RetrievalEngine(scorer, processor, progress=False).exhaustive(gallery).i2t


def top1_agreement(scores, reference):
    """The lower share of queries (captions -> image, images -> caption) whose best answer is the
    reference's; where the reference's best margin is tied, any of the tied answers agrees."""
    shares = []
    for axis in (0, 1):
        best = np.expand_dims(scores.argmax(axis), axis)
        shares.append(np.mean(np.take_along_axis(reference, best, axis) == reference.max(axis, keepdims=True)))
    return min(shares)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8", "fp16"])
def test_precision_within_its_tolerance(setup, precision):
    skip_unless_supported(precision)
    model_dir, gallery, reference = setup
    scorer, scores = runtime_scores(model_dir, gallery, precision)
    assert scorer.precision == precision
    assert_within_tolerance(scores, reference, precision, reference.std())
    assert top1_agreement(scores, reference) >= TOP1[precision]


def test_bf16_runs_bfloat16_matmuls_on_onednn(setup):
    skip_unless_supported("bf16")
    model_dir, _, _ = setup
    scorer, _ = load_scorer(model_dir, "bf16")
    assert scorer.predictor_config.onednn_enabled()
    graph = open(os.path.join(model_dir, inference.EXPORT_DIR, "match_head.bf16.json")).read()
    assert "bfloat16" in graph
    assert "bfloat16" not in open(os.path.join(model_dir, inference.EXPORT_DIR, "match_head.json")).read()


def test_int8_quantizes_the_encoder_matmuls_only(setup):
    skip_unless_supported("int8")
    import onnx

    model_dir, _, _ = setup
    scorer, _ = load_scorer(model_dir, "int8")
    nodes = onnx.load(scorer.onnx_path).graph.node
    layers = scorer.config.num_hidden_layers
    # per layer: query, key, value, attention output, intermediate, output
    assert sum(node.op_type == "MatMulInteger" for node in nodes) == 6 * layers
    # left in fp32: the attention products (2 per layer), the pooler and the classifier
    assert sum(node.op_type == "MatMul" for node in nodes) == 2 * layers + 2


def test_changed_weights_are_exported_again(setup, tmp_path):
    """The export is tied to the weights: after they change, the scorer scores with the new ones."""
    model_dir, gallery, reference = setup
    own = derive(model_dir, str(tmp_path / "model"))
    _, before = runtime_scores(own, gallery, "fp32")
    derive(own, own, logit_scale=3.0)
    _, after = runtime_scores(own, gallery, "fp32")
    np.testing.assert_allclose(before, reference, rtol=0, atol=1e-4 * reference.std())
    np.testing.assert_allclose(after, 3.0 * reference, rtol=0, atol=3e-4 * reference.std())


@pytest.mark.parametrize("precision,missing", [("bf16", "avx512_bf16"), ("int8", "avx512_vnni")])
def test_precision_without_instructions_refused_before_export(setup, tmp_path, precision, missing):
    model_dir, _, _ = setup
    own = derive(model_dir, str(tmp_path / "model"))
    shutil.rmtree(os.path.join(own, inference.EXPORT_DIR), ignore_errors=True)  # copied from the module's model
    with pytest.raises(UsageError, match=missing):
        load_scorer(own, precision, flags=AVX2_ONLY)
    assert not os.path.exists(os.path.join(own, inference.EXPORT_DIR))


def test_fp16_without_a_gpu_refused():
    with pytest.raises(UsageError, match="GPU"):
        check_precision("fp16", gpus=0)


def test_unknown_precision_and_config_only_directory_refused(setup):
    with pytest.raises(UsageError, match="fp32, bf16, int8, fp16"):
        check_precision("int4", frozenset())
    with pytest.raises(UsageError, match="no saved weights"):
        load_scorer("tiny", "fp32")
