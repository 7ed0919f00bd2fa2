"""HoldCapacity / ReleaseCapacity on the in-process runner: a record (the broker's ledger is
the capacity check), idempotent per id, bad input refused with the field named. The Slurm
runner's holds (reservations) are in tests/slurm."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from agent_testing import StartAgent, simulated_config
from google.protobuf.timestamp_pb2 import Timestamp

from protos import agent_pb2, agent_pb2_grpc


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _request(
    hold_id: str, accelerators: int, start: datetime, end: datetime
) -> agent_pb2.HoldCapacityRequest:
    return agent_pb2.HoldCapacityRequest(
        hold_id=hold_id, accelerators=accelerators, start_time=_ts(start), end_time=_ts(end)
    )


def test_a_hold_is_idempotent_and_released_once(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config())
    stub = agent_pb2_grpc.AgentStub(channel)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    end = start + timedelta(hours=2)
    made = stub.HoldCapacity(_request("BK-1-1", 12, start, end), timeout=5)
    assert made.created and made.hold.pool_key == "nvidia-h100-sxm"
    assert made.hold.nodes == 2 and made.hold.reference == ""  # 12 of 8 per node: 2 nodes
    assert made.hold.start_time.ToDatetime(tzinfo=UTC) == start
    assert not stub.HoldCapacity(_request("BK-1-1", 12, start, end), timeout=5).created
    assert stub.ReleaseCapacity(
        agent_pb2.ReleaseCapacityRequest(hold_id="BK-1-1"), timeout=5
    ).released
    assert not stub.ReleaseCapacity(
        agent_pb2.ReleaseCapacityRequest(hold_id="BK-1-1"), timeout=5
    ).released


def test_bad_holds_are_invalid_argument_naming_the_field(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config())
    stub = agent_pb2_grpc.AgentStub(channel)
    now = datetime.now(UTC)
    cases = [
        (_request("", 4, now, now + timedelta(hours=1)), "hold_id"),
        (_request("a b", 4, now, now + timedelta(hours=1)), "hold_id"),
        (_request("BK-2", 0, now, now + timedelta(hours=1)), "accelerators"),
        (_request("BK-2", 17, now, now + timedelta(hours=1)), "accelerators"),
        (_request("BK-2", 4, now, now - timedelta(hours=1)), "end_time"),
        (_request("BK-2", 4, now - timedelta(hours=3), now - timedelta(hours=2)), "end_time"),
        (agent_pb2.HoldCapacityRequest(hold_id="BK-2", accelerators=4), "start_time"),
    ]
    for request, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.HoldCapacity(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field)
