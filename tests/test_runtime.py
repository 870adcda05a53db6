"""vinvl.runtime's CPU defaults: the MKL code-path override is set on AMD processors only (on an
AVX-512 Intel Xeon it pins MKL to slower AVX2 kernels)."""
import os
import subprocess
import sys

import pytest

from vinvl.runtime import cpu_vendor

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
