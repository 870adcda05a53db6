"""scripts/benchmark_detector_precision.py on the tiny detector and two photos (one calibrates int8):
the four runs are timed and compared, fp32 on Paddle Inference agrees with dygraph box for box,
the tiny detector's own folder gets no calibration, and a CPU without bf16 or int8 is refused
before anything loads."""
import os
import re

import pytest

from vinvl import precision as precision_module
from vinvl.commands.benchmark_detector_precision import main
from vinvl.errors import UsageError
from vinvl.precision import cpu_flags

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY

PHOTOS = [os.path.join(PHOTO_DIR, f"COCO_val2014_000000{n}.jpg") for n in ("131089", "045057")]


@pytest.mark.skipif(not {"avx512_bf16", "amx_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions")
@pytest.mark.skipif(not {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags(), reason="this CPU has no int8 instructions")
def test_the_benchmark_times_four_runs_and_compares_them(capsys):
    assert main(["--detector", TINY, "--calibration_photos", "1", *PHOTOS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "1 photos measured, 1 more calibrate int8" in lines[0]
    for run in ("fp32 dygraph", "fp32 Paddle Inference", "bf16 Paddle Inference", "int8 ONNX Runtime"):
        assert any(re.match(rf"{run}: [0-9.]+ images/s wall, [0-9.]+ CPU s/image", line) for line in lines), lines
    (fp32,) = [line for line in lines if line.startswith("fp32 Paddle Inference against fp32 dygraph: ")]
    matched = re.search(r"matched (\d+)/(\d+) boxes \((\d+) found\), same class (\d+), same attributes (\d+)", fp32)
    assert len(set(matched.groups())) == 1 and int(matched.group(1)) > 0, fp32
    for run in ("bf16 Paddle Inference", "int8 ONNX Runtime"):
        assert any(line.startswith(f"{run} against fp32 Paddle Inference: matched ") for line in lines), lines
    assert not os.path.exists(os.path.join(TINY, "int8_calibration"))


def test_no_photo_left_to_measure_is_refused():
    with pytest.raises(UsageError, match="2 photos leave none to measure after the 2 that calibrate int8"):
        main(["--detector", TINY, "--calibration_photos", "2", *PHOTOS])


def test_a_cpu_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(UsageError, match="precision 'bf16' needs a CPU with one of the instructions"):
        main(["--detector", TINY, *PHOTOS])
