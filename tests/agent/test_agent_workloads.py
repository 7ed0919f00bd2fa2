"""Workloads dispatched to an agent: lifecycle, idempotency, stop, watch and capacity."""

from __future__ import annotations

import grpc
import pytest
from agent_testing import StartAgent, simulated_config

from agent.config import SimulationConfig
from protos import agent_pb2, agent_pb2_grpc

PENDING = agent_pb2.WORKLOAD_STATE_PENDING
RUNNING = agent_pb2.WORKLOAD_STATE_RUNNING
SUCCEEDED = agent_pb2.WORKLOAD_STATE_SUCCEEDED
FAILED = agent_pb2.WORKLOAD_STATE_FAILED
STOPPED = agent_pb2.WORKLOAD_STATE_STOPPED


def start_request(workload_id: str, **fields: object) -> agent_pb2.StartWorkloadRequest:
    values: dict[str, object] = {
        "workload_id": workload_id,
        "accelerators": 4,
        "image": "registry.example/train:1",
        "command": "python train.py",
        "duration_seconds": 3600.0,
    }
    values.update(fields)
    return agent_pb2.StartWorkloadRequest(**values)  # type: ignore[arg-type]


def watch_states(stub: agent_pb2_grpc.AgentStub, workload_id: str) -> list[int]:
    request = agent_pb2.WatchWorkloadRequest(workload_id=workload_id)
    return [event.workload.state for event in stub.WatchWorkload(request, timeout=20)]


def test_a_workload_runs_to_success_with_timestamps(
    honest_stub: agent_pb2_grpc.AgentStub,
) -> None:
    started = honest_stub.StartWorkload(start_request("bk-1"), timeout=5)
    assert started.created is True
    assert started.workload.pool_key == "nvidia-h100-sxm"  # the only pool, chosen by default

    states = watch_states(honest_stub, "bk-1")
    assert states[-1] == SUCCEEDED
    assert states == sorted(states)  # never goes back: PENDING -> RUNNING -> SUCCEEDED

    final = honest_stub.GetWorkload(agent_pb2.GetWorkloadRequest(workload_id="bk-1")).workload
    assert final.state == SUCCEEDED
    assert final.HasField("started_at") and final.HasField("finished_at")
    assert final.created_at.ToDatetime() <= final.started_at.ToDatetime()
    assert final.started_at.ToDatetime() <= final.finished_at.ToDatetime()


def test_starting_the_same_workload_twice_returns_the_existing_one(
    honest_stub: agent_pb2_grpc.AgentStub,
) -> None:
    first = honest_stub.StartWorkload(start_request("bk-2"), timeout=5)
    second = honest_stub.StartWorkload(start_request("bk-2", accelerators=1), timeout=5)
    assert (first.created, second.created) == (True, False)
    assert second.workload.accelerators == 4
    assert second.workload.created_at == first.workload.created_at


def test_a_command_that_fails_ends_failed(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    honest_stub.StartWorkload(start_request("bk-3", command="false"), timeout=5)
    assert watch_states(honest_stub, "bk-3")[-1] == FAILED


def test_stopping_a_running_workload_ends_it_stopped(start_agent: StartAgent) -> None:
    # Real time: the workload would run for an hour unless stopped.
    config = simulated_config(simulation=SimulationConfig(time_scale=1.0))
    _, channel = start_agent(config)
    stub = agent_pb2_grpc.AgentStub(channel)
    stub.StartWorkload(start_request("bk-4"), timeout=5)
    events = stub.WatchWorkload(agent_pb2.WatchWorkloadRequest(workload_id="bk-4"), timeout=20)
    assert next(events).workload.state in (PENDING, RUNNING)

    stopped = stub.StopWorkload(
        agent_pb2.StopWorkloadRequest(workload_id="bk-4", reason="booking cancelled"), timeout=5
    ).workload
    assert stopped.state == STOPPED
    assert stopped.message == "booking cancelled"
    assert [event.workload.state for event in events][-1] == STOPPED
    # Stopping again changes nothing.
    again = stub.StopWorkload(agent_pb2.StopWorkloadRequest(workload_id="bk-4"), timeout=5)
    assert again.workload == stopped


def test_a_workload_waits_pending_while_the_pool_is_full(start_agent: StartAgent) -> None:
    runtime, channel = start_agent(simulated_config(simulation=SimulationConfig(time_scale=1.0)))
    stub = agent_pb2_grpc.AgentStub(channel)
    stub.StartWorkload(start_request("big", accelerators=16), timeout=5)
    watch_until(stub, "big", RUNNING)
    assert runtime.workloads.busy("nvidia-h100-sxm") == 16

    stub.StartWorkload(start_request("small", accelerators=1), timeout=5)
    # All 16 accelerators are held, so "small" cannot have started, however long we look.
    small = stub.GetWorkload(agent_pb2.GetWorkloadRequest(workload_id="small")).workload
    assert small.state == PENDING
    stub.StopWorkload(agent_pb2.StopWorkloadRequest(workload_id="big"), timeout=5)
    watch_until(stub, "small", RUNNING)
    assert runtime.workloads.busy("nvidia-h100-sxm") == 1


def watch_until(stub: agent_pb2_grpc.AgentStub, workload_id: str, state: int) -> None:
    """Watch a workload until it reaches ``state``, then hang up."""
    events = stub.WatchWorkload(agent_pb2.WatchWorkloadRequest(workload_id=workload_id), timeout=20)
    for event in events:
        if event.workload.state == state:
            events.cancel()
            return
    pytest.fail(f"{workload_id} ended without reaching state {state}")


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (start_request(""), grpc.StatusCode.INVALID_ARGUMENT),
        (start_request("x", accelerators=0), grpc.StatusCode.INVALID_ARGUMENT),
        (start_request("x", accelerators=17), grpc.StatusCode.INVALID_ARGUMENT),
        (start_request("x", pool_key="other"), grpc.StatusCode.NOT_FOUND),
    ],
)
def test_a_bad_start_request_is_refused(
    honest_stub: agent_pb2_grpc.AgentStub,
    request_: agent_pb2.StartWorkloadRequest,
    code: grpc.StatusCode,
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        honest_stub.StartWorkload(request_, timeout=5)
    assert raised.value.code() is code


def test_unknown_workloads_are_not_found(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    for call in (
        lambda: honest_stub.GetWorkload(agent_pb2.GetWorkloadRequest(workload_id="ghost")),
        lambda: honest_stub.StopWorkload(agent_pb2.StopWorkloadRequest(workload_id="ghost")),
        lambda: list(
            honest_stub.WatchWorkload(agent_pb2.WatchWorkloadRequest(workload_id="ghost"))
        ),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
