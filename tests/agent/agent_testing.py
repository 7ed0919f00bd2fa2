"""Helpers shared by the agent's tests (a module, not conftest, so tests can import it)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
from agent.server import AgentRuntime

# Small enough that the emulated H100 takes milliseconds per challenge (see docs/agent.md).
TIME_SCALE = 1e-5

H100_POOL = PoolConfig(
    key="nvidia-h100-sxm",
    accelerator_model="nvidia-h100-sxm",
    accelerators_per_node=8,
    nodes=2,
    intra_node_interconnect="nvlink",
    inter_node_interconnect="infiniband",
    declared_tflops_per_accelerator=989.0,
)


def simulated_config(
    mode: SimulationMode = SimulationMode.HONEST, **changes: object
) -> AgentConfig:
    """An agent simulating one H100 pool in ``mode`` on an ephemeral port."""
    values: dict[str, object] = {
        "agent_id": f"test-{mode}",
        "port": 0,
        "pools": (H100_POOL,),
        "simulation": SimulationConfig(mode=mode, time_scale=TIME_SCALE),
        "workload_startup_seconds": 0.0,
    }
    values.update(changes)
    return AgentConfig(**values)  # type: ignore[arg-type]


StartAgent = Callable[[AgentConfig], tuple[AgentRuntime, grpc.Channel]]
