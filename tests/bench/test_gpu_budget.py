"""``bench/gpu_budget.py`` without a GPU: it says nothing was measured and exits 2; it runs
without Django; its copy of the precision caps is the verifier's. The figures themselves come
from a GPU machine (``bash bench/gpu_check.sh``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_budget import CAPS
from verification.services import MAX_MATRIX_SIZE_BY_PRECISION

ROOT = Path(__file__).resolve().parents[2]


def test_caps_are_the_verifiers() -> None:
    assert CAPS == MAX_MATRIX_SIZE_BY_PRECISION


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def test_no_gpu_nothing_measured() -> None:
    if _has_cuda():
        pytest.skip("a CUDA device is here: bench/gpu_check.sh runs the real measurement")
    done = subprocess.run(
        [sys.executable, "bench/gpu_budget.py", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nothing measured, every figure n/a" in done.stdout
    assert "BUDGET status=n/a" in done.stdout


def test_standalone_without_django() -> None:
    code = (
        "import sys; import bench.gpu_budget; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('django', 'registry', 'verification', 'brokers', 'agent', 'interconnect')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
