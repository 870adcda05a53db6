"""scripts/benchmark_precision_gate.py on a stand-in trained a few steps: every precision ranks the
gallery, raw and with each query's top pairs re-scored at fp32; the report is checked for what a
working gate must show, not for the figures of this untrained stand-in."""
import pytest

from vinvl.benchmarks.precision_gate import GateSettings, format_gate, run_gate
from vinvl.retrieval.evaluate import DEFAULT_RESCORE_TOP

from support.precision import skip_unless_supported

IMAGES = 20  # 100 captions: each caption's top 20 is every image, so re-scoring covers every pair


@pytest.mark.slow
def test_the_gate_ranks_every_pair_raw_and_rescored(tmp_path):
    for precision in ("bf16", "int8"):
        skip_unless_supported(precision)
    settings = GateSettings(str(tmp_path), train_steps=20, train_images=50, images=IMAGES,
                            caption_queries=5 * IMAGES, image_queries=IMAGES)
    report = run_gate(settings)
    rows = report["rows"]
    low = ["bf16", "int8 dynamic", "int8 static"]
    assert list(rows) == ["fp32"] + [name for p in low for name in (p, f"{p}, top {DEFAULT_RESCORE_TOP} at fp32")]
    assert rows["fp32"]["gate_met"] and rows["fp32"]["margin_error_max"] == 0
    for precision in low:
        raw, rescored = rows[precision], rows[f"{precision}, top {DEFAULT_RESCORE_TOP} at fp32"]
        assert raw["margin_error_rms"] > 1e-4  # it ran at low precision
        # Every pair was re-scored (each caption's top 20 holds all 20 images): fp32's margins.
        assert rescored["pairs_rescored"] == IMAGES * 5 * IMAGES
        assert rescored["margin_error_max"] < 1e-4 and rescored["gate_met"]
    table = format_gate(report)
    assert f"| bf16, top {DEFAULT_RESCORE_TOP} at fp32 | 1.000 / 1.000 |" in table
    assert "stand-in-50-20-0" in str(list(tmp_path.iterdir()))  # one folder per corpus
