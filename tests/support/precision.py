"""What the precision tests of every entry point share: the model they score with, each precision's
documented tolerance against fp32 (docs/benchmarks.md, "Precision"), and the check that a low
precision both stays within it and really ran (its margins differ measurably from fp32's).

The model is the tiny config with seeded random weights drawn wider than the default
(``initializer_range`` 0.1): its margins spread (std ~0.09) as a trained model's do, where the
40-step trained stand-in's all lie within 0.003 of each other."""
import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle

from vinvl import precision as precision_module
from vinvl.oscar.model_dir import load_retrieval_model

# precision -> largest |margin - fp32 margin| / std of the fp32 margins over the same pairs
TOLERANCE = {"fp32": 1e-4, "bf16": 0.15, "int8": 0.5, "int8 static": 0.75, "fp16": 0.15}
# below this relative difference a "low precision" answer is taken to have been computed in fp32
FP32_LIKE = 1e-3
AVX2_ONLY = frozenset({"sse4_2", "avx", "avx2", "fma"})


def save_wide_model(path, seed: int = 3, trained_heads=None) -> str:
    """The tiny config with weights drawn at ``initializer_range`` 0.1 after ``paddle.seed(seed)``,
    recording ``trained_heads``, saved to ``path``."""
    paddle.seed(seed)
    model, _ = load_retrieval_model("tiny", config_overrides={"initializer_range": 0.1})
    model.config.trained_heads = trained_heads
    model.save_pretrained(str(path))
    return str(path)


def skip_unless_supported(precision: str) -> None:
    """Skip where this machine lacks what ``precision`` needs (CPU instructions, a GPU)."""
    try:
        precision_module.check_precision(precision)
    except Exception as exc:  # the UsageError naming what is missing
        pytest.skip(str(exc))


def assert_within_tolerance(margins, reference, precision: str, scale: float) -> float:
    """``margins`` (a low precision's) agree with ``reference`` (fp32's, same pairs) within the
    precision's tolerance of ``scale`` (the std of fp32 margins), and differ from them by more than
    :data:`FP32_LIKE` (so a silent fall-back to fp32 fails); returns the relative error."""
    margins, reference = np.asarray(margins, np.float64), np.asarray(reference, np.float64)
    assert margins.shape == reference.shape and margins.size > 0
    error = float(np.abs(margins - reference).max() / scale)
    limit = TOLERANCE[precision]
    assert error <= limit, f"{precision}: margin error {error:.3f} of the std, above {limit}"
    if precision != "fp32":
        assert error > FP32_LIKE, f"{precision}: margins equal fp32's to {error:.1e} of the std: it ran in fp32"
    return error


def refuse_missing_instructions(monkeypatch) -> None:
    """Make this process see a CPU with AVX2 only (no bf16, no VNNI) and no GPU."""
    monkeypatch.setattr(precision_module, "cpu_flags", lambda cpuinfo="/proc/cpuinfo": AVX2_ONLY)
    monkeypatch.setattr(precision_module, "gpu_count", lambda: 0)


def assert_bf16_regions(rows, reference) -> float:
    """``rows`` (a photo's region rows from the bf16 detector) are near ``reference`` (the fp32
    detector's rows of the same photo) and not equal to them: the detector ran in bf16. Returns
    the largest difference relative to the largest fp32 value.

    Near-tied scores of the random tiny detector may reorder regions or swap one, so rows are paired
    by their box (the last 6 columns; the tiny detector's boxes are anchors, equal in both); at
    least 80% of the fp32 boxes must be found. The bounds are bf16's own run (docs/detector.md)."""
    boxes = {tuple(np.round(r[2048:], 4)): r for r in reference}
    pairs = [(boxes[key], r) for r in rows if (key := tuple(np.round(r[2048:], 4))) in boxes]
    assert len(pairs) >= 0.8 * len(boxes), f"{len(pairs)} of {len(boxes)} fp32 boxes found"
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    error = float(np.abs(b - a).max() / np.abs(a).max())
    assert 1e-4 < error < 2e-2, f"bf16 region error {error:.1e}: outside (1e-4, 2e-2)"
    return error


def assert_detector_gate(agreement, matched: float, worst_error: float, error_floor: float, precision: str) -> None:
    """A detector run's :class:`~vinvl.vision.agreement.Agreement` with fp32 meets its documented
    gate (docs/detector.md): at least ``matched`` of the reference boxes matched and as many with the
    same class, features within ``worst_error``, and their median error above ``error_floor``, below
    which ``precision`` did not really run (it gave fp32's numbers)."""
    assert agreement.matched >= matched * agreement.reference_boxes, agreement.summary()
    assert agreement.same_class >= matched * agreement.reference_boxes, agreement.summary()
    assert agreement.worst_feature_error() < worst_error, agreement.summary()
    ran = agreement.median_feature_error() > error_floor
    assert ran, f"{precision} gave fp32's numbers: {agreement.summary()}"
