"""als.cu compiles with nvcc for Ampere (sm_80) and Hopper (sm_90) with no register spills, with
float32 factors and with bfloat16 ones (the *_bf16 kernels, built with -DBF16_FACTORS).

CuPy compiles the same source with NVRTC at run time; nvcc with ``-Xptxas -v`` here is how a
machine without a GPU sees the registers and spills of each kernel. Skipped where nvcc is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from airflow_gpu.worker.gpu.solver import KERNELS, SOURCE, build_options, kernels_for


def nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.exists() else None


@pytest.mark.skipif(nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("factors", [64, 128])
@pytest.mark.parametrize("factor_dtype", ["float32", "bfloat16"])
def test_als_cu_compiles_without_spills(tmp_path, arch, factors, factor_dtype):
    expected = set(kernels_for(factor_dtype))  # every kernel the solver loads must be compiled, and no other
    assert factor_dtype == "float32" or expected == set(KERNELS)  # the bf16 build holds them all
    result = subprocess.run(
        [
            nvcc(),
            f"-arch={arch}",
            "-cubin",
            "-Xptxas",
            "-v",
            *build_options(factors, factor_dtype),  # the options NVRTC gets from the solver
            "-o",
            str(tmp_path / "als.cubin"),
            str(SOURCE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "error" not in log.lower() and "warning" not in log.lower(), log
    compiled = set(re.findall(r"Compiling entry function '(\w+)'", log))
    assert compiled == expected, log
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    assert len(spills) == len(expected) and all(s == ("0", "0") for s in spills), log
    stacks = re.findall(r"(\d+) bytes stack frame", log)
    assert all(s == "0" for s in stacks), log
