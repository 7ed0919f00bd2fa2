"""The torch backend on a real NVIDIA GPU, judged by the real verifier (marked ``gpu``).

Skipped (never passed) without torch and a CUDA device: `make test` and CI have neither. On a
GPU machine run ``.venv/bin/pytest -m gpu tests/verification/test_gpu.py -s`` after
``pip install torch``. The agent runs as a real process (``python -m agent --backend torch``);
the verifier's judgement (``verification.services._probe_and_judge``) runs here on unsaved
model instances, so no database is needed.

What must hold: an H200 passes its own BF16 declaration; the same H200 declared as two H200s
fails (the agent cannot answer for a device it does not have); the same H200 declared in BF16
while computing with FP8 inputs fails the arithmetic check.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from registry.models import Accelerator, Center, Pool
from tests.verification.conftest import ROOT
from verification import services
from verification.errors import VerificationRefuted


def _cuda_devices() -> int:
    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


DEVICES = _cuda_devices()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICES == 0, reason="needs torch and an NVIDIA GPU"),
]

H200 = SimpleNamespace(slug="nvidia-h200-sxm", bf16=989.0)


@pytest.fixture
def production(settings: Any) -> Any:
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_ACCEPT_SIMULATED = False
    settings.VERIFICATION_MATRIX_SIZE = settings.VERIFICATION_MAX_MATRIX_SIZE = 8192
    settings.VERIFICATION_MAX_STEPS = 8
    settings.VERIFICATION_TARGET_SECONDS = 4.0
    # One product a commitment, as in production (composite steps are off by default:
    # docs/verification.md "Composite steps"); n is held to BF16's cap, 4096.
    settings.VERIFICATION_OPEN_STEPS = 2
    settings.VERIFICATION_FREIVALDS_ROUNDS = 4
    settings.VERIFICATION_SAMPLE_NODES = 1
    settings.VERIFICATION_MAX_CHALLENGE_BYTES = 64 * 2**30
    settings.VERIFICATION_RPC_TIMEOUT = 300.0
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = True
    return settings


@pytest.fixture
def torch_agent() -> Iterator[Any]:
    processes: list[subprocess.Popen[str]] = []

    def start(per_node: int, *extra: str) -> str:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent",
                "--port",
                "0",
                "--backend",
                "torch",
                "--model",
                H200.slug,
                "--accelerators",
                str(per_node),
                "--nodes",
                "1",
                "--declared-tflops",
                str(H200.bf16),
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        found = re.search(r"listening on (\S+)", process.stdout.readline())
        assert found
        return found.group(1)

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def judge(endpoint: str, per_node: int) -> services.Evidence:
    """The verifier's checks against ``endpoint`` for an H200 x per_node pool."""
    accelerator = Accelerator(slug=H200.slug, bf16_dense_tflops=H200.bf16)
    center = Center(agent_endpoint=endpoint)
    pool = Pool(
        center=center,
        accelerator=accelerator,
        accelerators_per_node=per_node,
        nodes=1,
        declared_tflops_per_accelerator=H200.bf16,
        declared_precision="bf16",
    )
    evidence = services.Evidence()
    run = SimpleNamespace(run_id=uuid.uuid4(), attempts=1)
    services._probe_and_judge(run, pool, evidence)  # type: ignore[arg-type]
    return evidence


@pytest.mark.xfail(
    reason="one product a commitment: a 0.14 ms BF16 product at n = 4096 next to copying and "
    "hashing its 64 MiB on the host (docs/verification.md, 'Speed of real GPUs'); expected to "
    "pass once commitments hashed on the device replace host hashing inside the clock",
    raises=VerificationRefuted,
    strict=False,
)
def test_an_h200_passes_its_own_bf16_declaration(production: Any, torch_agent: Any) -> None:
    """Declared at the datasheet's dense BF16 peak (989): the tolerance (80 %) asks for 791
    TFLOPS measured on the verifier's clock, commitments and copies included."""
    evidence = judge(torch_agent(DEVICES), DEVICES)
    fields = ("n", "steps", "sample", "wall_seconds", "measured_tflops_per_accelerator", "devices")
    print("GPU", {k: evidence.fields.get(k) for k in fields})
    assert evidence.measured_tflops is not None
    assert evidence.measured_tflops >= 0.8 * H200.bf16


def test_one_h200_declared_as_two_fails(production: Any, torch_agent: Any) -> None:
    with pytest.raises(VerificationRefuted) as refused:
        judge(torch_agent(2 * DEVICES), 2 * DEVICES)
    print("GPU two-for-one:", refused.value)
    assert "not on this host" in str(refused.value) or "throughput" in str(refused.value)


def test_fp8_arithmetic_under_a_bf16_declaration_fails(
    production: Any, torch_agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent process computes with FP8 (E4M3) inputs: INTERCONNECT_TORCH_CHEAT_FP8=1.
    monkeypatch.setenv("INTERCONNECT_TORCH_CHEAT_FP8", "1")
    with pytest.raises(VerificationRefuted) as refused:
        judge(torch_agent(DEVICES), DEVICES)
    print("GPU fp8:", refused.value)
    assert str(refused.value).startswith("arithmetic")
