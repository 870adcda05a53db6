"""scripts/benchmark_precision.py's query part on the tiny config and a six-image index: caption
queries are timed through the query core at fp32, bf16 and int8, with the split per stage and the
agreement with fp32 (figures are reported, never asserted against a time)."""
import pytest

from vinvl.commands.benchmark_precision import main

from support.precision import skip_unless_supported


@pytest.mark.slow
def test_the_query_part_times_caption_queries_over_an_index_at_each_precision(capsys):
    for precision in ("bf16", "int8"):
        skip_unless_supported(precision)
    report = main(["--config", "tiny", "--parts", "query", "--query_images", "6", "--queries", "3", "--candidates", "4"])
    assert "speed" not in report and "agreement" not in report
    query = report["query"]
    assert query["images"] == 6 and query["queries"] == 3 and 10 <= query["regions_mean"] <= 50
    assert list(query["rows"]) == ["fp32", "bf16", "int8"]
    for row in query["rows"].values():
        assert 0 < row["p50_ms"] <= row["p95_ms"] and 0 < row["cpu_p50_ms"]
        assert set(row["stages_ms"]) == {"first_stage", "feature_reads", "scoring"}
        assert all(value > 0 for value in row["stages_ms"].values())
        assert 0.0 <= row["top1_as_fp32"] <= 1.0
    assert query["rows"]["fp32"]["top1_as_fp32"] == 1.0
    out = capsys.readouterr().out
    assert "| precision | p50 ms | p95 ms | p50 CPU ms |" in out and "a gallery index of 6 images" in out


def test_parts_are_checked_when_parsed(capsys):
    with pytest.raises(SystemExit):
        main(["--parts", "speed,queries"])
    assert "expected some of speed,agreement,query separated by commas, got 'speed,queries'" in capsys.readouterr().err
