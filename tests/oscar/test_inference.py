"""The match head on an inference runtime at fp32, bf16 and int8 (vinvl.oscar.inference), against
the dygraph model's exhaustive scores on a synthetic test split.

The model is the tiny config with seeded random weights drawn wider than the default
(``initializer_range`` 0.1): its margins spread (std ~0.07) as a trained model's do, where the
40-step trained stand-in's margins all lie within 0.003 of each other, so that any ranking
agreement on it is noise. Each precision is held to its gate (docs/benchmarks.md, "Precision"): the
largest margin error relative to the spread (std) of the fp32 margins, and the share of queries
(captions -> image and images -> caption) whose top-1 answer is fp32's. bf16 and int8 must also
differ measurably from fp32 and show their runtime's low-precision setting, so a scorer that
silently ran fp32 fails."""
import os
import shutil

import numpy as np
import onnx
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle

from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.errors import UsageError
from vinvl.oscar import inference
from vinvl.oscar.inference import check_precision, cpu_flags, load_scorer
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.retrieval import Gallery, RetrievalEngine

from support.tinymodel import derive

TEST_IMAGES = 24
# precision -> (max |margin error| / std of the fp32 margins, top-1 agreement at least)
GATES = {"fp32": (1e-4, 1.0), "bf16": (0.3, 0.85), "int8": (0.6, 0.6)}
# below this relative error a "low precision" scorer is taken to have run in fp32
FP32_LIKE = 1e-3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model_dir, gallery, dygraph exhaustive margins [images, captions])."""
    root = tmp_path_factory.mktemp("inference")
    write_synthetic_corpus(str(root / "corpus"), {"train": 8, "minival": 8, "val": 8, "test": TEST_IMAGES}, seed=5)
    gallery = Gallery.from_corpus(load_corpus(str(root / "corpus"), "test"))
    paddle.seed(3)
    model, _ = load_retrieval_model("tiny", config_overrides={"initializer_range": 0.1})
    model_dir = str(root / "model")
    model.save_pretrained(model_dir)
    model, processor = load_retrieval_model(model_dir)
    return model_dir, gallery, RetrievalEngine(model, processor, progress=False).exhaustive(gallery).i2t


def runtime_scores(model_dir, gallery, precision):
    scorer, processor = load_scorer(model_dir, precision)
    return scorer, RetrievalEngine(scorer, processor, progress=False).exhaustive(gallery).i2t


def top1_agreement(scores, reference):
    """Share of queries (captions -> image, images -> caption) whose best answer is the reference's."""
    t2i = np.mean(scores.argmax(0) == reference.argmax(0))
    i2t = np.mean(scores.argmax(1) == reference.argmax(1))
    return min(t2i, i2t)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_precision_within_its_gate(setup, precision):
    needed = inference._REQUIRED_FLAGS[precision]
    if needed and not needed & cpu_flags():
        pytest.skip(f"this CPU lacks the instructions for {precision}")
    model_dir, gallery, reference = setup
    scorer, scores = runtime_scores(model_dir, gallery, precision)
    error = np.abs(scores - reference).max() / reference.std()
    max_error, min_agreement = GATES[precision]
    assert scores.shape == reference.shape
    assert error <= max_error, f"{precision}: relative margin error {error:.2e} above its gate {max_error}"
    assert top1_agreement(scores, reference) >= min_agreement
    if precision == "bf16":
        # bf16 runs through oneDNN; the error check below shows it ran in bf16
        assert scorer.predictor_config.onednn_enabled()
    if precision == "int8":
        graph = onnx.load(os.path.join(model_dir, inference.EXPORT_DIR, "match_head.int8.onnx")).graph
        assert any(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in graph.node)
    if precision != "fp32":
        assert error > FP32_LIKE, f"{precision} scores equal fp32's to {error:.1e}: it did not run in {precision}"


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
    avx2_only = frozenset({"sse4_2", "avx", "avx2", "fma"})
    with pytest.raises(UsageError, match=missing):
        load_scorer(own, precision, flags=avx2_only)
    assert not os.path.exists(os.path.join(own, inference.EXPORT_DIR))


def test_unknown_precision_and_config_only_directory_refused(setup):
    with pytest.raises(UsageError, match="fp16"):
        check_precision("fp16", frozenset())
    with pytest.raises(UsageError, match="no saved weights"):
        load_scorer("tiny", "fp32")
