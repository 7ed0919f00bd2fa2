"""Heartbeats reach the platform's Telemetry service with the bearer token and pool load.

The platform's servicer lives elsewhere; a minimal Telemetry server stands in for it here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import replace

import grpc
import pytest
from agent_testing import H100_POOL, StartAgent, simulated_config

from agent.config import CenterConfig, HeartbeatConfig, SimulationConfig
from agent.heartbeat import HeartbeatSender
from protos import agent_pb2, agent_pb2_grpc


class RecordingTelemetry(agent_pb2_grpc.TelemetryServicer):
    """Keeps every heartbeat with its authorization header."""

    def __init__(self) -> None:
        self.received: list[tuple[agent_pb2.SendHeartbeatRequest, str]] = []
        self.arrived = threading.Event()

    def SendHeartbeat(
        self, request: agent_pb2.SendHeartbeatRequest, context: grpc.ServicerContext
    ) -> agent_pb2.SendHeartbeatResponse:
        authorization = dict(context.invocation_metadata()).get("authorization", "")
        self.received.append((request, str(authorization)))
        self.arrived.set()
        response = agent_pb2.SendHeartbeatResponse()
        response.received_at.GetCurrentTime()
        return response


@pytest.fixture
def telemetry() -> Iterator[tuple[RecordingTelemetry, int]]:
    servicer = RecordingTelemetry()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_TelemetryServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0).wait()


def test_heartbeats_carry_the_token_and_each_pools_load(
    telemetry: tuple[RecordingTelemetry, int], start_agent: StartAgent
) -> None:
    servicer, port = telemetry
    pool = replace(H100_POOL, national_id="CN-ZJK-0042-P1")
    config = simulated_config(
        pools=(pool,),
        # Real time, so the workload below stays running for the whole test.
        simulation=SimulationConfig(time_scale=1.0),
        heartbeat=HeartbeatConfig(
            platform=f"127.0.0.1:{port}", token="tok-123", interval_seconds=0.05
        ),
        center=CenterConfig(national_id="CN-ZJK-0042"),
    )
    runtime, channel = start_agent(config)
    # 4 of the pool's 16 accelerators are busy.
    agent_pb2_grpc.AgentStub(channel).StartWorkload(
        agent_pb2.StartWorkloadRequest(workload_id="bk", accelerators=4, duration_seconds=3600)
    )
    while runtime.workloads.busy(pool.key) != 4:
        time.sleep(0.01)

    sender = HeartbeatSender(config, runtime.workloads)
    sender.start()
    try:
        assert servicer.arrived.wait(10)
    finally:
        sender.stop()

    request, authorization = servicer.received[0]
    assert authorization == "Bearer tok-123"
    assert request.agent_id == "test-honest"
    assert request.center_national_id == "CN-ZJK-0042"
    assert request.HasField("sent_at")
    (entry,) = request.pools
    assert (entry.pool_key, entry.pool_national_id) == (pool.key, "CN-ZJK-0042-P1")
    assert (entry.accelerators_busy, entry.accelerators_healthy) == (4, 16)
    assert entry.utilization == 0.25


def test_heartbeats_keep_trying_when_the_platform_is_down(start_agent: StartAgent) -> None:
    config = simulated_config(
        heartbeat=HeartbeatConfig(platform="127.0.0.1:9", token="t", interval_seconds=0.05)
    )
    runtime, _ = start_agent(config)
    sender = HeartbeatSender(config, runtime.workloads)
    sender.start()
    time.sleep(0.3)
    sender.stop()
    assert sender.sent == 0  # failures were logged, the thread survived and stopped on request


def test_heartbeats_need_a_platform_and_a_token() -> None:
    config = simulated_config()
    with pytest.raises(ValueError, match="platform address and a token"):
        HeartbeatSender(config, None)  # type: ignore[arg-type]
