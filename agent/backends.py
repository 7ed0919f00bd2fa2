"""Backends that really compute challenges: ``numpy`` on the host CPU, ``torch`` on CUDA devices
(or Ascend NPUs through ``torch_npu``).

Chosen with ``python -m agent --backend numpy|torch``. torch is imported only when the torch
backend is built, so neither the platform nor ``make run`` needs it.

Device mapping: challenge device ``d`` of a pool runs on local device ``d`` (``cuda:d``); a
device the host does not have is refused (FAILED_PRECONDITION), so an agent cannot answer for
accelerators it does not see. The numpy backend has one device per host (the CPU, all cores):
a pool it fronts declares one accelerator per node.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np

from agent.benchmark import Backend, DeviceReport, StepSink
from agent.challenge import (
    boundary_shift,
    flops,
    inputs,
    link_signs,
    next_input,
    step_mix,
)
from agent.challenge import step as step_product
from agent.config import PoolConfig
from agent.errors import FailedPrecondition, InvalidArgument
from agent.inventory import cpu_description

BACKENDS = ("numpy", "torch")


class NumpyBackend:
    """The chain on the host CPU with numpy (FP32 accumulation for 16-bit inputs)."""

    def run_chain(self, sink: StepSink, pool: PoolConfig) -> DeviceReport:
        name = sink.challenge.precision
        x, b = inputs(sink.seed, sink.challenge.n, name)
        n, inner = sink.challenge.n, sink.challenge.inner
        for step in range(1, sink.challenge.steps + 1):
            signs = link_signs(sink.seed, n, inner, name, step=step)
            product = step_product(x, b, name, inner, signs)
            x = next_input(product, name, b, sink.commit(step, product))
        return DeviceReport(sink.device, f"numpy on {cpu_description()}")


class TorchBackend:
    """The chain on one accelerator per challenge device, through torch.

    BF16/FP16 products are asked for in FP32 (``out_dtype``), so the product is returned before
    any rounding; FP32 runs with TF32 disabled. Each product is copied to the host and hashed
    there before the next step starts: the next input depends on the commitment
    (``agent.challenge.next_input``).
    """

    def __init__(self, device_type: str = "") -> None:
        self.torch: Any = importlib.import_module("torch")
        if not device_type:
            device_type = "cuda"
            try:
                importlib.import_module("torch_npu")
                device_type = "npu"
            except ImportError:
                pass
        self.device_type = device_type
        # Test hook of tests/verification/test_gpu.py: compute as a cheater would, to show that
        # the verifier refuses it. Never set it on a real agent.
        self.cheat_fp8 = os.environ.get("INTERCONNECT_TORCH_CHEAT_FP8") == "1"
        module = getattr(self.torch, device_type, None)
        count = module.device_count() if module is not None and module.is_available() else 0
        if device_type == "cpu":
            count = 1
        self.count = int(count)
        if device_type == "cuda":
            self.torch.backends.cuda.matmul.allow_tf32 = False
            self.torch.backends.cudnn.allow_tf32 = False
        self._dtypes = {
            "bf16": self.torch.bfloat16,
            "fp16": self.torch.float16,
            "fp32": self.torch.float32,
            "fp64": self.torch.float64,
        }

    def describe(self, index: int) -> str:
        if self.device_type == "cuda":
            return f"cuda:{index} {self.torch.cuda.get_device_name(index)}"
        return f"{self.device_type}:{index}"

    def _tensor(self, array: np.ndarray[Any, Any], name: str, device: Any) -> Any:
        torch = self.torch
        if name == "bf16":  # numpy has no bfloat16: move the bits
            bits = torch.from_numpy(array.view(np.uint16).copy())
            return bits.view(torch.bfloat16).to(device)
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def _matmul(self, x: Any, b: Any, name: str) -> Any:
        torch = self.torch
        if self.cheat_fp8:  # the GPU test's cheater: FP8 (E4M3) inputs under a BF16 challenge
            x = x.to(torch.float8_e4m3fn).to(x.dtype)
            b = b.to(torch.float8_e4m3fn).to(b.dtype)
        if name in ("bf16", "fp16"):
            if self.device_type == "cpu":  # no mm.dtype kernel on the CPU: exact in FP32
                return torch.mm(x.float(), b.float())
            return torch.mm(x, b, out_dtype=torch.float32)
        return torch.mm(x, b)

    def run_chain(self, sink: StepSink, pool: PoolConfig) -> DeviceReport:
        torch = self.torch
        index = sink.device
        if index >= self.count:
            raise FailedPrecondition(
                f"device {index} is not on this host ({self.count} {self.device_type} devices)"
            )
        name = sink.challenge.precision
        device = torch.device(self.device_type, index) if self.device_type != "cpu" else "cpu"
        a, b = inputs(sink.seed, sink.challenge.n, name)
        x, bt = self._tensor(a, name, device), self._tensor(b, name, device)
        scale = float(np.float32(1.0 / np.sqrt(sink.challenge.n)))
        if name == "fp64":
            scale = 1.0 / float(np.sqrt(sink.challenge.n))
        acc = torch.float64 if name == "fp64" else torch.float32
        b_acc = bt.to(acc)
        for step in range(1, sink.challenge.steps + 1):
            # Each link's column factors s d_j (agent.challenge.link_signs, new every step):
            # +-s, exact.
            signs: Any = link_signs(
                sink.seed, sink.challenge.n, sink.challenge.inner, name, step=step
            )
            links = self.torch.from_numpy(signs * scale).to(device)
            for j in range(sink.challenge.inner - 1):  # unsent products, signed, scaled, rounded
                linked = self._matmul(x, bt, name) * links[j][None, :]
                x = linked.t().contiguous().to(self._dtypes[name])
            product = self._matmul(x, bt, name)
            host = product.to("cpu", non_blocking=False).numpy()
            commitment = sink.commit(step, host)
            scaled = product * scale
            # The committed step's power of two (agent.challenge.boundary_shift): exact.
            peak = float(torch.maximum(scaled.max(), -scaled.min()))
            shift = boundary_shift(peak)
            if shift:
                scaled = scaled * (2.0**-shift)
            # Plus B P D (agent.challenge.step_mix), one rounding in the accumulator type.
            order, signs = step_mix(commitment, sink.challenge.n, name)
            term = (
                b_acc[:, torch.from_numpy(order).to(device)]
                * torch.from_numpy(signs).to(device)[None, :]
            )
            scaled = scaled.t() + term
            x = scaled.contiguous().to(self._dtypes[name])
        return DeviceReport(index, self.describe(index))


def backend_for(name: str) -> Backend:
    """The backend called ``name``; InvalidArgument for an unknown one."""
    if name == "numpy":
        return NumpyBackend()
    if name == "torch":
        return TorchBackend()
    raise InvalidArgument("backend", f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")


def measure(backend: Backend, name: str = "fp32", n: int = 1024, steps: int = 8) -> float:
    """TFLOPS of one device of ``backend`` on a chain, timed here (``python -m agent measure``):
    what an operator may declare for a host it has no catalog figure for."""
    import time

    from agent.benchmark import Challenge, ChallengeStore, run_challenge

    challenge = Challenge("measure", n, name, steps, ((0, 1),))
    pool = PoolConfig(key="measure", accelerator_model="measure")
    started = time.perf_counter()
    for _ in run_challenge(challenge, pool, backend, ChallengeStore()):
        pass
    return flops(n, steps) / (time.perf_counter() - started) / 1e12
