"""The Slurm-backed agent against a real Slurm 22.05 (slurmctld, two slurmd, slurmdbd): pools
from sinfo, holds as advance reservations, workloads as jobs, usage from sacct, a drained node,
a controller killed mid-run, and what the agent must never touch."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from agent.heartbeat import build_heartbeat
from protos import agent_pb2, agent_pb2_grpc
from tests.harness.procs import PYTHON, ROOT, wait_until
from tests.harness.slurm import SlurmCluster
from tests.slurm.conftest import A100, StartSlurmAgent, work_file

pytestmark = pytest.mark.slow


def _ts(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _hold(
    stub: agent_pb2_grpc.AgentStub,
    hold_id: str,
    accelerators: int,
    start: datetime,
    end: datetime,
) -> agent_pb2.HoldCapacityResponse:
    return stub.HoldCapacity(
        agent_pb2.HoldCapacityRequest(
            hold_id=hold_id,
            pool_key="gpu",
            accelerators=accelerators,
            start_time=_ts(start),
            end_time=_ts(end),
        ),
        timeout=30,
    )


def _reservation(cluster: SlurmCluster, name: str) -> str:
    """The reservation's line, "" when there is none ("not found" is printed on stdout)."""
    out = cluster.run("scontrol", "show", "reservation", name, "-o", check=False).stdout
    return out if f"ReservationName={name} " in out else ""


def _state(stub: agent_pb2_grpc.AgentStub, workload_id: str) -> agent_pb2.Workload:
    return stub.GetWorkload(
        agent_pb2.GetWorkloadRequest(workload_id=workload_id), timeout=30
    ).workload


def _wait_state(
    stub: agent_pb2_grpc.AgentStub, workload_id: str, state: int, timeout: float = 40
) -> agent_pb2.Workload:
    return wait_until(
        lambda: (w := _state(stub, workload_id)).state == state and w,
        timeout=timeout,
        interval=0.2,
        what=f"{workload_id} in {agent_pb2.WorkloadState.Name(state)}",
    )


def _start(
    stub: agent_pb2_grpc.AgentStub, workload_id: str, command: str, accelerators: int = 4
) -> agent_pb2.StartWorkloadResponse:
    return stub.StartWorkload(
        agent_pb2.StartWorkloadRequest(
            workload_id=workload_id,
            pool_key="gpu",
            accelerators=accelerators,
            image="registry.example/train:1",
            command=command,
            duration_seconds=3600,
        ),
        timeout=30,
    )


def test_pools_come_from_slurm(slurm_agent: StartSlurmAgent) -> None:
    """Partitions' nodes with GPU GRES are the pools; heartbeats carry their live state (the
    drained node as the platform sees it: test_slurm_broker.py)."""
    runtime, scheduler, channel = slurm_agent()
    inventory = agent_pb2_grpc.AgentStub(channel).GetInventory(
        agent_pb2.GetInventoryRequest(), timeout=10
    )
    (pool,) = inventory.pools
    assert (pool.pool_key, pool.accelerator_model) == ("gpu", A100)
    assert (pool.accelerators_per_node, pool.nodes) == (8, 2)
    assert len(pool.device_details) == 2 and "gpu:a100:8" in pool.device_details[0]
    assert not inventory.simulated
    beat = build_heartbeat(runtime.config, scheduler).pools[0]
    assert (beat.pool_key, beat.accelerators_healthy) == ("gpu", 16)
    assert beat.accelerators_busy <= beat.accelerators_healthy


def test_the_agent_process_fronts_slurm_and_refuses_slurm_with_simulation(
    slurm_cluster: SlurmCluster,
) -> None:
    """``python -m agent --scheduler slurm`` as a center runs it; bad combinations exit 2."""
    refused = subprocess.run(
        [PYTHON, "-m", "agent", "--scheduler", "slurm", "--simulate", "honest"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert refused.returncode == 2 and "a simulated center has no Slurm" in refused.stderr
    proc = subprocess.Popen(
        [
            PYTHON,
            "-m",
            "agent",
            "--scheduler",
            "slurm",
            "--port",
            "0",
            "--slurm-conf",
            str(slurm_cluster.conf),
            "--slurm-user",
            "root",
            "--slurm-model",
            f"a100={A100}",
            "--agent-id",
            "zjk-slurm",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        while not any("(slurm) listening" in line for line in seen) and len(seen) < 50:
            seen.append(proc.stdout.readline())
        line = seen[-1]
        assert "agent zjk-slurm (slurm) listening on 127.0.0.1:" in line, "".join(seen)
        port = int(line.rsplit(":", 1)[1])
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            inventory = agent_pb2_grpc.AgentStub(channel).GetInventory(
                agent_pb2.GetInventoryRequest(), timeout=10
            )
        assert [(p.pool_key, p.accelerator_model, p.nodes) for p in inventory.pools] == [
            ("gpu", A100, 2)
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_a_hold_is_a_reservation_of_whole_nodes_for_the_service_account(
    slurm_cluster: SlurmCluster, slurm_agent: StartSlurmAgent
) -> None:
    _, _, channel = slurm_agent()
    stub = agent_pb2_grpc.AgentStub(channel)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    end = start + timedelta(hours=1)
    made = _hold(stub, "BK-H1-1", 4, start, end)
    assert made.created and made.hold.nodes == 1 and made.hold.reference == "ic-BK-H1-1"
    shown = _reservation(slurm_cluster, "ic-BK-H1-1")
    assert "Users=root " in shown and "NodeCnt=1 " in shown and "PartitionName=gpu" in shown
    assert made.hold.start_time.ToDatetime(tzinfo=UTC) == start
    assert made.hold.end_time.ToDatetime(tzinfo=UTC) == end
    # Idempotent per hold id.
    again = _hold(stub, "BK-H1-1", 4, start, end)
    assert not again.created and again.hold.reference == "ic-BK-H1-1"
    # 12 accelerators of 8-GPU nodes: two whole nodes (the rounding rule).
    two = _hold(stub, "BK-H2-1", 12, start + timedelta(hours=2), end + timedelta(hours=2))
    assert two.hold.nodes == 2 and "NodeCnt=2 " in _reservation(slurm_cluster, "ic-BK-H2-1")

    for hold_id in ("BK-H1-1", "BK-H2-1"):
        released = stub.ReleaseCapacity(
            agent_pb2.ReleaseCapacityRequest(hold_id=hold_id, reason="test"), timeout=30
        )
        assert released.released
        assert not _reservation(slurm_cluster, f"ic-{hold_id}")
    assert not stub.ReleaseCapacity(
        agent_pb2.ReleaseCapacityRequest(hold_id="BK-H1-1"), timeout=30
    ).released

    # Bad input: INVALID_ARGUMENT naming the field, nothing made in Slurm.
    for hold_id, accelerators, a, b, field in (
        ("bad id;rm -rf", 4, start, end, "hold_id"),
        ("BK-BAD-1", 17, start, end, "accelerators"),
        ("BK-BAD-2", 4, end, start, "end_time"),
        ("BK-BAD-3", 4, start - timedelta(hours=3), start - timedelta(hours=2), "end_time"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            _hold(stub, hold_id, accelerators, a, b)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in caught.value.details()
    assert "ic-BK-BAD" not in slurm_cluster.run("scontrol", "show", "reservation").stdout
    # An id that scontrol could read as more than a name: refused at every door.
    sneaky = "x Users=daemon Flags=IGNORE_JOBS"
    for call in (
        lambda: _start(stub, sneaky, "true"),
        lambda: stub.ReleaseCapacity(agent_pb2.ReleaseCapacityRequest(hold_id=sneaky)),
        lambda: _hold(stub, sneaky, 4, start, end),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "daemon" not in slurm_cluster.run("scontrol", "show", "reservation").stdout
    assert not slurm_cluster.run("squeue", "-h", "-n", f"ic-{sneaky}").stdout.strip()


def test_the_agent_never_touches_reservations_or_jobs_it_did_not_create(
    slurm_cluster: SlurmCluster, slurm_agent: StartSlurmAgent
) -> None:
    """The center's own reservation (named like the agent's, for another user) and job are left
    alone; a hold that needs the nodes they take is refused (RESOURCE_EXHAUSTED)."""
    _, _, channel = slurm_agent()
    stub = agent_pb2_grpc.AgentStub(channel)
    slurm_cluster.run(
        "scontrol",
        "create",
        "reservation",
        "ReservationName=ic-BK-LOCAL-1",
        "Users=daemon",
        "StartTime=now",
        "Duration=120",
        "NodeCnt=1",
        "PartitionName=gpu",
    )
    local_job = slurm_cluster.run(
        "sbatch", "--parsable", "--job-name=ic-BK-LOCAL-2", "--wrap=sleep 300", "--gpus=1"
    ).stdout.strip()
    try:
        # Release and hold of a name the agent did not make: refused, nothing changed.
        assert not stub.ReleaseCapacity(
            agent_pb2.ReleaseCapacityRequest(hold_id="BK-LOCAL-1"), timeout=30
        ).released
        now = datetime.now(UTC)
        with pytest.raises(grpc.RpcError) as caught:
            _hold(stub, "BK-LOCAL-1", 4, now, now + timedelta(hours=1))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "Users=daemon" in _reservation(slurm_cluster, "ic-BK-LOCAL-1")
        # A job named like the agent's, not started by it: StopWorkload does not know it.
        with pytest.raises(grpc.RpcError) as caught:
            stub.StopWorkload(agent_pb2.StopWorkloadRequest(workload_id="BK-LOCAL-2"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        queued = slurm_cluster.run("squeue", "-h", "-j", local_job, "-o", "%T").stdout.strip()
        assert queued in ("RUNNING", "PENDING")
        # Both nodes are taken locally (one reserved, one running a job): two nodes for the
        # next hour cannot be held, and no half-made reservation is left behind.
        with pytest.raises(grpc.RpcError) as caught:
            _hold(stub, "BK-FULL-1", 16, now, now + timedelta(hours=1))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ic-BK-FULL-1" not in slurm_cluster.run("scontrol", "show", "reservation").stdout
    finally:
        slurm_cluster.run("scancel", local_job, check=False)
        slurm_cluster.run("scontrol", "delete", "ReservationName=ic-BK-LOCAL-1", check=False)


def test_a_workload_runs_as_a_job_in_its_reservation_and_its_usage_comes_from_sacct(
    slurm_cluster: SlurmCluster, slurm_agent: StartSlurmAgent
) -> None:
    # A container runtime wraps the command with the image ("env" stands in for apptainer).
    _, _, channel = slurm_agent(container="env RUNTIME_IMAGE={image}")
    stub = agent_pb2_grpc.AgentStub(channel)
    now = datetime.now(UTC)
    _hold(stub, "BK-RUN-1", 4, now, now + timedelta(hours=1))
    out = work_file(slurm_cluster, "run-1.txt")
    started = _start(
        stub, "BK-RUN-1", f'echo "ok $CUDA_VISIBLE_DEVICES $RUNTIME_IMAGE" > {out}; sleep 2'
    )
    assert started.created
    assert not _start(stub, "BK-RUN-1", "ignored").created  # idempotent per id
    queued = slurm_cluster.run("squeue", "-h", "-n", "ic-BK-RUN-1", "-o", "%v|%i").stdout
    reservation, job_id = queued.strip().split("|")
    assert reservation == "ic-BK-RUN-1"  # the job runs in its reservation
    failing = _start(stub, "BK-RUN-2", "exit 3")  # no hold: the agent makes one for the run
    assert failing.created

    done = _wait_state(stub, "BK-RUN-1", agent_pb2.WORKLOAD_STATE_SUCCEEDED)
    # Four fake GPUs, given by Slurm; the image, given to the container runtime.
    assert out.read_text().split() == ["ok", "0,1,2,3", "registry.example/train:1"]
    assert done.scheduler_state == "COMPLETED"
    # Usage as sacct measured it: allocated GPUs x elapsed seconds.
    row = (
        slurm_cluster.run("sacct", "-n", "-P", "-X", "-j", job_id, "-o", "ElapsedRaw,AllocTRES")
        .stdout.strip()
        .split("|")
    )
    assert "gres/gpu=4" in row[1]
    assert done.accelerator_hours == pytest.approx(4 * int(row[0]) / 3600)
    assert done.accelerator_hours > 0
    assert done.HasField("started_at") and done.HasField("finished_at")

    failed = _wait_state(stub, "BK-RUN-2", agent_pb2.WORKLOAD_STATE_FAILED)
    assert failed.scheduler_state == "FAILED" and "exited with 3" in failed.message

    for hold_id in ("BK-RUN-1", "BK-RUN-2"):
        assert stub.ReleaseCapacity(
            agent_pb2.ReleaseCapacityRequest(hold_id=hold_id), timeout=30
        ).released
    # The center's admin cancels the job in Slurm: the workload fails, saying so.
    _start(stub, "BK-RUN-3", "sleep 60", accelerators=1)
    _wait_state(stub, "BK-RUN-3", agent_pb2.WORKLOAD_STATE_RUNNING)
    slurm_cluster.run("scancel", "-n", "ic-BK-RUN-3")
    cancelled = _wait_state(stub, "BK-RUN-3", agent_pb2.WORKLOAD_STATE_FAILED)
    assert cancelled.scheduler_state == "CANCELLED" and "by the center" in cancelled.message

    assert stub.ReleaseCapacity(
        agent_pb2.ReleaseCapacityRequest(hold_id="BK-RUN-3"), timeout=30
    ).released
    assert "ic-BK-RUN" not in slurm_cluster.run("scontrol", "show", "reservation").stdout


def test_the_agent_follows_its_job_through_a_controller_crash(
    slurm_cluster: SlurmCluster, slurm_agent: StartSlurmAgent
) -> None:
    _, scheduler, channel = slurm_agent()
    stub = agent_pb2_grpc.AgentStub(channel)
    out = work_file(slurm_cluster, "crash-1.txt")
    _start(stub, "BK-CRASH-1", f"sleep 10; echo survived > {out}", accelerators=8)
    running = _wait_state(stub, "BK-CRASH-1", agent_pb2.WORKLOAD_STATE_RUNNING)
    later = datetime.now(UTC) + timedelta(hours=5)
    _hold(stub, "BK-CRASH-2", 4, later, later + timedelta(hours=1))
    # slurmctld saves its state at most every 5 s: a SIGKILL sooner could lose the new job.
    time.sleep(5.5)
    slurm_cluster.kill_controller(signal.SIGKILL)
    try:
        # What must change something in Slurm is refused as transient (the broker retries),
        # and a release is remembered...
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReleaseCapacity(agent_pb2.ReleaseCapacityRequest(hold_id="BK-CRASH-2"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # ...and the agent keeps answering with the last state it knew.
        wait_until(lambda: not scheduler.reachable, timeout=30, what="the agent to notice")
        assert _state(stub, "BK-CRASH-1").state == agent_pb2.WORKLOAD_STATE_RUNNING
    finally:
        slurm_cluster.start_controller()
    wait_until(lambda: scheduler.reachable, timeout=30, what="the agent to reconnect")
    # ...and done once the controller is back: the released window does not keep the nodes.
    wait_until(
        lambda: not _reservation(slurm_cluster, "ic-BK-CRASH-2"),
        timeout=30,
        what="the released reservation deleted",
    )
    done = _wait_state(stub, "BK-CRASH-1", agent_pb2.WORKLOAD_STATE_SUCCEEDED, timeout=60)
    assert out.read_text().strip() == "survived"
    assert done.started_at == running.started_at
    assert done.accelerator_hours > 0
    stub.ReleaseCapacity(agent_pb2.ReleaseCapacityRequest(hold_id="BK-CRASH-1"), timeout=30)


def test_a_restarted_agent_finds_its_job_again_and_never_submits_it_twice(
    slurm_cluster: SlurmCluster, slurm_agent: StartSlurmAgent
) -> None:
    first, _, channel = slurm_agent()
    stub = agent_pb2_grpc.AgentStub(channel)
    _start(stub, "BK-AGAIN-1", "sleep 4")
    _wait_state(stub, "BK-AGAIN-1", agent_pb2.WORKLOAD_STATE_RUNNING)
    first.stop(grace=0).wait()  # the agent goes away; Slurm keeps the job
    _, _, channel = slurm_agent()
    again = agent_pb2_grpc.AgentStub(channel)
    assert _state(again, "BK-AGAIN-1").state == agent_pb2.WORKLOAD_STATE_RUNNING
    assert not _start(again, "BK-AGAIN-1", "sleep 4").created  # the dispatch retried
    assert len(slurm_cluster.run("squeue", "-h", "-n", "ic-BK-AGAIN-1").stdout.splitlines()) == 1
    done = _wait_state(again, "BK-AGAIN-1", agent_pb2.WORKLOAD_STATE_SUCCEEDED)
    assert done.accelerator_hours > 0
    with pytest.raises(grpc.RpcError) as caught:
        _state(again, "BK-NEVER-1")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    again.ReleaseCapacity(agent_pb2.ReleaseCapacityRequest(hold_id="BK-AGAIN-1"), timeout=30)


@pytest.mark.parametrize(
    ("slurm_state", "state", "message"),
    [
        ("COMPLETED", agent_pb2.WORKLOAD_STATE_SUCCEEDED, "completed"),
        ("TIMEOUT", agent_pb2.WORKLOAD_STATE_FAILED, "the booked window ended first"),
        ("NODE_FAIL", agent_pb2.WORKLOAD_STATE_FAILED, "node failure"),
        ("OUT_OF_MEMORY", agent_pb2.WORKLOAD_STATE_FAILED, "out of memory"),
        ("PREEMPTED", agent_pb2.WORKLOAD_STATE_FAILED, "preempted"),
        ("CANCELLED", agent_pb2.WORKLOAD_STATE_FAILED, "cancelled in Slurm by the center"),
    ],
)
def test_every_slurm_end_state_maps_to_a_workload_state_with_a_reason(
    slurm_state: str, state: int, message: str
) -> None:
    """The states the real cluster above cannot produce in seconds (a time limit, a node
    failure) map like the ones it does."""
    from agent.server import STATE_VALUES
    from agent.slurm.scheduler import ENDED

    mapped, text = ENDED[slurm_state]
    assert STATE_VALUES[mapped] == state and message in text
