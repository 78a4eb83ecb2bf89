"""benchmarks/gpu_check.sh: valid bash, and without a CUDA GPU it stops at once with a clear
message and exit status 2, writing no log. (On a GPU machine the script itself is the check.)"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present: run the script itself")
def test_without_cuda_it_stops_at_once(tmp_path):
    log = tmp_path / "gpu.log"
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT), str(log)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "gpu_check: no CUDA GPU" in proc.stderr and "needs a machine with one CUDA GPU" in proc.stderr
    assert proc.stderr.count("\n") == 1  # one line, no traceback
    assert not log.exists()  # nothing ran
    assert time.perf_counter() - t0 < 60
