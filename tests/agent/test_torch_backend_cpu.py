"""The torch backend computes the same chain, bit for bit, as the numpy backend (on torch's CPU
device), with one product per commitment and with signed links (protocol v2).

Skipped without torch (the project does not install it; `pip install torch==2.13.0` does on
this machine). What it guards: the torch backend's links (sign, scale, transpose, round) and
its power-of-two shift must match ``agent.challenge``, which the verifier uses, or an honest
GPU fails ``arithmetic``.
"""

from __future__ import annotations

import importlib.util
import queue
import time

import numpy as np
import pytest

from agent.backends import NumpyBackend, TorchBackend
from agent.benchmark import Backend, Challenge, StepSink
from agent.config import PoolConfig

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="needs torch (CPU build is enough)"
)


def chain_of(backend: Backend, name: str, inner: int, n: int = 96, steps: int = 5) -> list:
    challenge = Challenge("torch-cpu", n, name, steps, ((0, 1234),), b"", inner)
    products: dict = {}
    sink = StepSink(challenge, 0, 1234, time.perf_counter(), 1, queue.Queue(), products)
    backend.run_chain(sink, PoolConfig(key="k", accelerator_model="m"))
    return [products[(0, step)] for step in range(1, steps + 1)]


@pytest.mark.parametrize("name", ["bf16", "fp16", "fp32", "fp64"])
@pytest.mark.parametrize("inner", [1, 8])
def test_the_torch_backend_matches_numpy_bit_for_bit(name: str, inner: int) -> None:
    ours = chain_of(TorchBackend("cpu"), name, inner)
    reference = chain_of(NumpyBackend(), name, inner)
    for step, (a, b) in enumerate(zip(reference, ours, strict=True), start=1):
        assert np.ascontiguousarray(b, dtype=a.dtype).tobytes() == a.tobytes(), step
