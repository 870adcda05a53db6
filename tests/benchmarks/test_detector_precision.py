"""scripts/benchmark_detector_precision.py on the tiny detector and one photo: the three runs are
timed and compared, fp32 on Paddle Inference agrees with dygraph box for box, and a CPU without
bf16 is refused before anything loads."""
import os
import re

import pytest

from vinvl import precision as precision_module
from vinvl.commands.benchmark_detector_precision import main
from vinvl.errors import UsageError
from vinvl.precision import cpu_flags

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY

PHOTO = os.path.join(PHOTO_DIR, "COCO_val2014_000000045057.jpg")


@pytest.mark.skipif(not {"avx512_bf16", "amx_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions")
def test_the_benchmark_times_three_runs_and_compares_them(capsys):
    assert main(["--detector", TINY, PHOTO]) == 0
    lines = capsys.readouterr().out.splitlines()
    for run in ("fp32 dygraph", "fp32 Paddle Inference", "bf16 Paddle Inference"):
        assert any(re.match(rf"{run}: [0-9.]+ images/s wall, [0-9.]+ CPU s/image", line) for line in lines), lines
    (fp32,) = [line for line in lines if line.startswith("fp32 Paddle Inference against fp32 dygraph: ")]
    matched = re.search(r"matched (\d+)/(\d+) boxes \((\d+) found\), same class (\d+), same attributes (\d+)", fp32)
    assert len(set(matched.groups())) == 1 and int(matched.group(1)) > 0, fp32
    assert any(line.startswith("bf16 Paddle Inference against fp32 Paddle Inference: matched ") for line in lines)


def test_a_cpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(UsageError, match="precision 'bf16' needs a CPU with one of the instructions"):
        main(["--detector", TINY, PHOTO])
