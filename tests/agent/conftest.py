"""Fixtures for the site agent's tests: real gRPC servers on loopback, port 0, in process.

No database: these tests exercise the agent alone, the way the platform's worker would call it.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from agent_testing import StartAgent, simulated_config

from agent.config import AgentConfig
from agent.server import AgentRuntime, build_server
from protos import agent_pb2_grpc


@pytest.fixture
def start_agent() -> Iterator[StartAgent]:
    """Start agents on 127.0.0.1:0; each call returns the runtime and a channel to it."""
    started: list[tuple[AgentRuntime, grpc.Channel]] = []

    def start(config: AgentConfig) -> tuple[AgentRuntime, grpc.Channel]:
        runtime = build_server("127.0.0.1:0", agent_config=config)
        channel = grpc.insecure_channel(f"127.0.0.1:{runtime.port}")
        started.append((runtime, channel))
        return runtime, channel

    yield start
    for runtime, channel in started:
        channel.close()
        runtime.stop(grace=0).wait()


@pytest.fixture
def honest_stub(start_agent: StartAgent) -> agent_pb2_grpc.AgentStub:
    """A stub to an honest simulated H100 center."""
    _, channel = start_agent(simulated_config())
    return agent_pb2_grpc.AgentStub(channel)
