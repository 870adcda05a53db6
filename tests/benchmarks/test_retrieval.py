"""``vinvl benchmark --precisions``: the exhaustive engine measured again with the pair forward at
bf16 and int8 (the inference runtimes, exported from the same weights), each against the same fp32
reference pipeline; a precision the CPU lacks is refused before anything is written or trained."""
import os

import pytest

from vinvl.commands.benchmark import main as benchmark_main
from vinvl.errors import UsageError
from vinvl.oscar import inference

from support.precision import FP32_LIKE, refuse_missing_instructions, skip_unless_supported

SMOKE = ["--num_images", "6", "--train_steps", "0", "--baseline_pairs", "20", "--cpu_probe_images", "0",
         "--matmul_size", "256", "--candidates", "3", "--no_progress"]


@pytest.mark.slow
def test_the_exhaustive_path_is_measured_at_each_precision_against_one_reference(tmp_path, capsys):
    for precision in ("bf16", "int8"):
        skip_unless_supported(precision)
    report = benchmark_main(["--work_dir", str(tmp_path), *SMOKE, "--precisions", "fp32,bf16,int8"])
    paths = report["paths"]
    assert paths["baseline"]["pairs"] == 20
    for precision in ("bf16", "int8"):
        path = paths[f"exhaustive_{precision}"]
        assert path["pairs"] == paths["exhaustive"]["pairs"] == 6 * 30 and path["seconds"] > 0 and path["cpu_seconds"] > 0
        assert set(path["metrics"]) == set(paths["exhaustive"]["metrics"])
        agreement = report["precision_agreement"][precision]
        assert all(0.0 <= agreement[k] <= 1.0 for k in ("top1_t2i", "top1_i2t"))
        assert agreement["margin_error"] > FP32_LIKE, f"{precision} scored as fp32 does: it did not run"
    # the random tiny weights were saved, and the runtimes' graphs exported from them
    assert os.listdir(os.path.join(str(tmp_path), "tiny-random-seed0", inference.EXPORT_DIR))
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("(6) exhaustive engine per precision")))
    assert [line.split()[0] for line in lines[start + 2 : start + 5]] == ["fp32", "bf16", "int8"]


def test_a_precision_the_cpu_lacks_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    refuse_missing_instructions(monkeypatch)
    work = tmp_path / "work"
    with pytest.raises(UsageError, match="--precisions int8: precision 'int8' needs a CPU with one of the instructions"):
        benchmark_main(["--work_dir", str(work), *SMOKE, "--precisions", "fp32,int8"])
    assert not work.exists()
