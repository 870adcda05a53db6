"""vinvl.runtime's CPU defaults: the MKL code-path override is set on AMD processors only (on an
AVX-512 Intel Xeon it pins MKL to slower AVX2 kernels), and a Paddle Inference run leaves the
process its math threads."""
import os
import subprocess
import sys

import numpy as np
import pytest

from vinvl.runtime import cpu_vendor

from support.paths import TINY_DETECTOR

CPUINFO = "processor\t: 0\nvendor_id\t: {}\ncpu family\t: 25\nflags\t\t: fpu avx2\n\nprocessor\t: 1\nvendor_id\t: {}\n"


def test_cpu_vendor_reads_the_vendor_id_line(tmp_path):
    for vendor in ("AuthenticAMD", "GenuineIntel"):
        path = tmp_path / f"{vendor}.txt"
        path.write_text(CPUINFO.format(vendor, vendor))
        assert cpu_vendor(str(path)) == vendor
    empty = tmp_path / "empty.txt"
    empty.write_text("processor\t: 0\n")
    assert cpu_vendor(str(empty)) is None
    assert cpu_vendor(str(tmp_path / "missing")) is None


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads the processor vendor from /proc/cpuinfo")
@pytest.mark.slow
def test_import_sets_the_mkl_override_only_on_amd():
    with open("/proc/cpuinfo", encoding="utf-8") as handle:  # read independently of vinvl.runtime
        amd = "AuthenticAMD" in handle.read()
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_DEBUG_CPU_TYPE", "VINVL_NO_CPU_TUNING")}
    code = "import os, vinvl; print(os.environ.get('MKL_DEBUG_CPU_TYPE'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == ("5" if amd else "None")
    kept = subprocess.run([sys.executable, "-c", code], env=dict(env, MKL_DEBUG_CPU_TYPE="7"), capture_output=True,
                          text=True, timeout=300)
    assert kept.stdout.strip().splitlines()[-1] == "7"  # a value the user set is left alone


def _omp_max_threads() -> int:
    """The calling thread's OpenMP thread count, read from the OpenMP runtime paddle ships and runs on."""
    import ctypes

    import paddle

    return ctypes.CDLL(os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")).omp_get_max_threads()


def test_a_paddle_inference_run_leaves_the_process_its_math_threads(tmp_path, monkeypatch):
    # Paddle Inference ends each run at one thread; run_predictor gives the count back, or every later
    # dygraph op of the process runs on one thread.
    from vinvl.runtime import process_num_threads, run_predictor
    from vinvl.vision.inference import load_detector

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    predictor = load_detector(TINY_DETECTOR, "fp32", runtime="inference").graphs["body"].predictor
    predictor.get_input_handle("pixels").copy_from_cpu(np.zeros((1, 3, 64, 96), dtype=np.float32))
    predictor.run()
    assert _omp_max_threads() == 1  # what this guards against: without it, one thread from here on
    run_predictor(predictor)
    assert _omp_max_threads() == process_num_threads() == 2
