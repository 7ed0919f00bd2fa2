"""One real Slurm cluster for the whole session (slurmctld, two slurmd with 8 fake A100s each,
slurmdbd on a private MariaDB), and Slurm-backed agents on it.

Skipped, with the reason, only where Slurm cannot be installed (not root, no Debian packages);
``.ci/ensure-services.sh`` installs them, so in CI these tests run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from agent.config import AgentConfig
from agent.server import AgentRuntime, build_server
from agent.slurm.config import SlurmConfig
from agent.slurm.scheduler import SlurmScheduler
from tests.harness.slurm import SlurmCluster, missing

A100 = "nvidia-a100-80g"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(nodes=2, gpus_per_node=8, gpu_type="a100").start()
    (cluster.root / "work").mkdir()
    os.chmod(cluster.root / "work", 0o777)
    try:
        yield cluster
    finally:
        cluster.stop()


def slurm_config(cluster: SlurmCluster, **kwargs: object) -> SlurmConfig:
    values: dict[str, object] = {
        "user": "root",
        "conf": str(cluster.conf),
        "models": (f"a100={A100}",),
        "workdir": str(cluster.root / "work"),
        "poll_seconds": 0.5,
    }
    values.update(kwargs)
    return SlurmConfig(**values)  # type: ignore[arg-type]


StartSlurmAgent = Callable[..., tuple[AgentRuntime, SlurmScheduler, grpc.Channel]]


@pytest.fixture
def slurm_agent(slurm_cluster: SlurmCluster) -> Iterator[StartSlurmAgent]:
    """Start a Slurm-backed agent on 127.0.0.1:0 (what ``python -m agent --scheduler slurm``
    builds); returns its runtime, scheduler and a channel."""
    started: list[tuple[AgentRuntime, grpc.Channel]] = []

    def start(**kwargs: object) -> tuple[AgentRuntime, SlurmScheduler, grpc.Channel]:
        slurm = slurm_config(slurm_cluster, **kwargs)
        scheduler = SlurmScheduler(slurm)
        config = scheduler.agent_config(
            AgentConfig(agent_id="slurm-test", port=0, scheduler="slurm", slurm=slurm)
        )
        runtime = build_server("127.0.0.1:0", agent_config=config, workloads=scheduler)
        channel = grpc.insecure_channel(f"127.0.0.1:{runtime.port}")
        started.append((runtime, channel))
        return runtime, scheduler, channel

    yield start
    for runtime, channel in started:
        channel.close()
        runtime.stop(grace=0).wait()


def work_file(cluster: SlurmCluster, name: str) -> Path:
    return cluster.root / "work" / name


__all__ = ["A100", "StartSlurmAgent", "replace", "slurm_config", "work_file"]
