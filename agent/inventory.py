"""What the agent fronts: its pools, and what the host really detected.

Detection tries, in order: CUDA devices through torch (if torch is importable), ``nvidia-smi``
(if it is on PATH), and finally the CPU. It only describes; the pools themselves come from the
configuration, because a node the agent runs on rarely sees the whole pool.
"""

from __future__ import annotations

import functools
import importlib
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from agent import __version__
from agent.config import AgentConfig, PoolConfig


@dataclass(frozen=True)
class InventoryPool:
    """A configured pool together with the device lines the host reported for it."""

    pool: PoolConfig
    device_details: tuple[str, ...]


@dataclass(frozen=True)
class Inventory:
    """The answer to GetInventory, before it becomes protobuf."""

    agent_id: str
    agent_version: str
    hostname: str
    simulated: bool
    pools: tuple[InventoryPool, ...]


@functools.cache
def detect_devices() -> tuple[str, ...]:
    """Describe the compute devices of this host, one line each (cached: it can be slow)."""
    return _cuda_via_torch() or _cuda_via_nvidia_smi() or (cpu_description(),)


def cpu_description() -> str:
    """A one-line description of the host CPU, e.g. ``CPU: AMD EPYC 7763 (x86_64), 64 cores``."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass  # not Linux: platform.processor() below is the best we have
    model = model or platform.processor() or "unknown processor"
    return f"CPU: {model} ({platform.machine()}), {os.cpu_count() or 1} logical cores"


def _cuda_via_torch() -> tuple[str, ...]:
    try:
        torch = importlib.import_module("torch")
    except ImportError:
        return ()
    try:
        if not torch.cuda.is_available():
            return ()
        details = []
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            memory_gib = props.total_memory / 2**30
            details.append(f"CUDA {index}: {props.name}, {memory_gib:.0f} GiB (torch)")
        return tuple(details)
    except Exception:  # a broken driver must not stop the agent: fall back to the next probe
        return ()


def _cuda_via_nvidia_smi() -> tuple[str, ...]:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return ()
    try:
        completed = subprocess.run(
            [executable, "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(
        f"CUDA {line.strip()} (nvidia-smi)" for line in completed.stdout.splitlines() if line
    )


def simulated_device(pool: PoolConfig, config: AgentConfig) -> str:
    """How a simulated pool describes its accelerators: the model, the emulated speed, the host."""
    assert config.simulation is not None
    emulated = (
        pool.declared_tflops_per_accelerator
        * config.simulation.time_scale
        * config.simulation.effective_speed_factor
    )
    return (
        f"simulated {pool.accelerator_model} x{pool.accelerators_per_node} per node "
        f"x{pool.nodes} nodes, emulated at {emulated * 1e3:.4g} GFLOPS per accelerator "
        f"on {cpu_description()}"
    )


def build_inventory(
    config: AgentConfig, *, details: Callable[[str], tuple[str, ...]] | None = None
) -> Inventory:
    """The agent's inventory: configured pools, with detected (or simulated) device lines;
    ``details`` (the runner's, per pool key) replaces detection when it has something to say
    (a Slurm agent describes the cluster's nodes, not the host it runs on)."""
    pools = []
    for pool in config.pools:
        found = details(pool.key) if details is not None else ()
        if not found:
            found = (simulated_device(pool, config),) if config.simulated else detect_devices()
        pools.append(InventoryPool(pool=pool, device_details=found))
    return Inventory(
        agent_id=config.agent_id,
        agent_version=__version__,
        hostname=socket.gethostname(),
        simulated=config.simulated,
        pools=tuple(pools),
    )
