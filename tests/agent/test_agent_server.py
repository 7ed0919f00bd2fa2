"""The agent's server: health, reflection and inventory, as a platform worker sees them."""

from __future__ import annotations

import grpc
from agent_testing import H100_POOL, StartAgent, simulated_config
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agent import __version__
from agent.config import AgentConfig, PoolConfig
from agent.server import create_server
from protos import agent_pb2, agent_pb2_grpc


def test_create_server_binds_a_free_port_and_reports_serving() -> None:
    server, port = create_server("127.0.0.1:0", agent_config=simulated_config())
    try:
        assert port > 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "interconnect.agent.v1.Agent"):
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0).wait()


def test_health_turns_not_serving_when_the_agent_stops(start_agent: StartAgent) -> None:
    runtime, channel = start_agent(simulated_config())
    runtime.health.enter_graceful_shutdown()
    answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_agent_health_and_reflection_services(
    start_agent: StartAgent,
) -> None:
    _, channel = start_agent(simulated_config())
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {service.name for service in answer.list_services_response.service}
    assert {
        "interconnect.agent.v1.Agent",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_inventory_of_a_simulated_center_describes_its_pool(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config())
    inventory = agent_pb2_grpc.AgentStub(channel).GetInventory(
        agent_pb2.GetInventoryRequest(), timeout=5
    )
    assert inventory.agent_id == "test-honest"
    assert inventory.agent_version == __version__
    assert inventory.hostname
    assert inventory.simulated is True
    (pool,) = inventory.pools
    assert pool.pool_key == H100_POOL.key
    assert pool.accelerator_model == "nvidia-h100-sxm"
    assert (pool.accelerators_per_node, pool.nodes) == (8, 2)
    assert (pool.intra_node_interconnect, pool.inter_node_interconnect) == ("nvlink", "infiniband")
    assert pool.declared_tflops_per_accelerator == 989.0
    assert pool.device_details and "simulated nvidia-h100-sxm" in pool.device_details[0]


def test_inventory_of_a_real_agent_reports_what_the_host_has(start_agent: StartAgent) -> None:
    config = AgentConfig(
        agent_id="real", port=0, pools=(PoolConfig(key="cpu", accelerator_model="x86-cpu"),)
    )
    _, channel = start_agent(config)
    inventory = agent_pb2_grpc.AgentStub(channel).GetInventory(
        agent_pb2.GetInventoryRequest(), timeout=30
    )
    assert inventory.simulated is False
    details = inventory.pools[0].device_details
    # This machine has no accelerator: the CPU is described (a GPU host lists CUDA devices).
    assert details and all(("CPU:" in line) or ("CUDA" in line) for line in details)
