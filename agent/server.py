"""The agent's gRPC server: the ``Agent`` service plus standard health and reflection.

The servicer is thin: each method converts the request into domain arguments, calls the
inventory, benchmarker or workload runner, and converts the answer back; protobuf does not go
past this module. Domain errors become gRPC statuses in one place, :func:`rpc_errors`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health
from grpc_status import rpc_status

from agent.backends import backend_for
from agent.benchmark import (
    Backend,
    Challenge,
    ChallengeStore,
    Commitment,
    DeviceReport,
    run_challenge,
)
from agent.challenge import MAX_CHUNK_BYTES, precision, row_blocks
from agent.config import AgentConfig, PoolConfig
from agent.errors import AgentError, InvalidArgument, ResourceExhausted
from agent.inventory import Inventory, build_inventory
from agent.simulation import backend_for_simulation, faults_for, health_delay
from agent.workloads import CapacityHold, Workload, WorkloadRunner, WorkloadSpec, WorkloadState
from protos import agent_pb2, agent_pb2_grpc
from protos.errors import ERRORS, reason_status
from rpckit import server as rpc_server
from rpckit.interceptors import PeerIdentityInterceptor
from rpckit.server import ServerTls, Service
from rpckit.tls import PLATFORM_URI, CertFiles, expiry_warning

logger = logging.getLogger(__name__)

AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name

_F = TypeVar("_F", bound=Callable[..., Any])

DTYPE_NAMES = {
    agent_pb2.DTYPE_BFLOAT16: "bf16",
    agent_pb2.DTYPE_FLOAT16: "fp16",
    agent_pb2.DTYPE_FLOAT32: "fp32",
    agent_pb2.DTYPE_FLOAT64: "fp64",
}
DTYPE_VALUES = {name: value for value, name in DTYPE_NAMES.items()}
STATE_VALUES = {
    WorkloadState.PENDING: agent_pb2.WORKLOAD_STATE_PENDING,
    WorkloadState.RUNNING: agent_pb2.WORKLOAD_STATE_RUNNING,
    WorkloadState.SUCCEEDED: agent_pb2.WORKLOAD_STATE_SUCCEEDED,
    WorkloadState.FAILED: agent_pb2.WORKLOAD_STATE_FAILED,
    WorkloadState.STOPPED: agent_pb2.WORKLOAD_STATE_STOPPED,
}


def rpc_errors(method: _F) -> _F:
    """Map domain errors to gRPC statuses: the one place that does it, for unary and streams.

    AgentError subclasses name their entry of the error catalog (``protos.errors``), whose gRPC
    status and reason code (``ErrorInfo``, as the platform's servers send) are sent; anything
    else is INTERNAL and logged with the method name (the caller never sees a traceback).
    """

    def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
        if isinstance(exc, AgentError):
            status = reason_status(exc.spec, exc.reason, str(exc))
            context.abort_with_status(rpc_status.to_status(status))
        logger.exception("agent RPC %s failed", method.__name__)
        context.abort(ERRORS["internal"].grpc_code, f"{method.__name__} failed: internal error")

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                _abort(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(method)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as exc:
            _abort(context, exc)
            raise  # unreachable: abort raises

    return unary  # type: ignore[return-value]


# --- conversions (protobuf stops here) -------------------------------------------------------


def timestamp_pb(moment: datetime | None) -> Timestamp | None:
    """A protobuf Timestamp for an aware datetime, or None."""
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def inventory_to_pb(inventory: Inventory) -> agent_pb2.GetInventoryResponse:
    """GetInventoryResponse from the domain inventory."""
    return agent_pb2.GetInventoryResponse(
        agent_id=inventory.agent_id,
        agent_version=inventory.agent_version,
        hostname=inventory.hostname,
        simulated=inventory.simulated,
        pools=[
            agent_pb2.InventoryPool(
                pool_key=entry.pool.key,
                accelerator_model=entry.pool.accelerator_model,
                accelerators_per_node=entry.pool.accelerators_per_node,
                nodes=entry.pool.nodes,
                intra_node_interconnect=entry.pool.intra_node_interconnect,
                inter_node_interconnect=entry.pool.inter_node_interconnect,
                declared_tflops_per_accelerator=entry.pool.declared_tflops_per_accelerator,
                device_details=list(entry.device_details),
            )
            for entry in inventory.pools
        ],
    )


def challenge_from_pb(
    request: agent_pb2.RunBenchmarkRequest, config: AgentConfig, pool: PoolConfig
) -> Challenge:
    """Validate a RunBenchmarkRequest against the agent's limits and the pool, and turn it into
    a Challenge."""
    name = DTYPE_NAMES.get(request.dtype)
    if name is None:
        raise InvalidArgument("dtype", "must be one of BFLOAT16, FLOAT16, FLOAT32, FLOAT64")
    if not 1 <= request.n <= config.max_matrix_size:
        raise InvalidArgument("n", f"must be between 1 and {config.max_matrix_size}")
    if not 1 <= request.steps <= config.max_steps:
        raise InvalidArgument("steps", f"must be between 1 and {config.max_steps}")
    inner = request.inner or 1
    if inner > config.max_inner:
        raise InvalidArgument("inner", f"must be between 1 and {config.max_inner}")
    if not request.challenge_id or len(request.challenge_id) > 100:
        raise InvalidArgument("challenge_id", "must be 1 to 100 characters")
    if not request.devices:
        raise InvalidArgument("devices", "name at least one device")
    devices = [(d.device, d.seed) for d in request.devices]
    indexes = [d for d, _ in devices]
    if len(set(indexes)) != len(indexes):
        raise InvalidArgument("devices", "each device at most once")
    if max(indexes) >= pool.accelerators:
        raise InvalidArgument("devices", f"the pool has devices 0..{pool.accelerators - 1}")
    kept = len(devices) * request.steps * request.n**2 * precision(name).accumulator.itemsize
    if kept > config.max_challenge_bytes:
        raise ResourceExhausted(
            f"the challenge's products ({kept // 2**20} MiB) exceed this agent's limit "
            f"({config.max_challenge_bytes // 2**20} MiB)"
        )
    return Challenge(
        challenge_id=request.challenge_id,
        n=request.n,
        precision=name,
        steps=request.steps,
        devices=tuple(devices),
        nonce=request.nonce,
        inner=inner,
    )


def benchmark_event_pb(event: Commitment | DeviceReport) -> agent_pb2.RunBenchmarkResponse:
    """The stream message of a commitment or a device report."""
    if isinstance(event, Commitment):
        return agent_pb2.RunBenchmarkResponse(
            commitment=agent_pb2.StepCommitment(
                device=event.device, step=event.step, digest=event.digest
            )
        )
    return agent_pb2.RunBenchmarkResponse(
        report=agent_pb2.DeviceReport(
            device=event.device,
            description=event.description,
            attestation=event.attestation,
            attestation_format=event.attestation_format,
        )
    )


def workload_spec_from_pb(request: agent_pb2.StartWorkloadRequest) -> WorkloadSpec:
    """WorkloadSpec from a StartWorkloadRequest."""
    return WorkloadSpec(
        workload_id=request.workload_id,
        pool_key=request.pool_key,
        accelerators=request.accelerators,
        image=request.image,
        command=request.command,
        duration_seconds=request.duration_seconds,
    )


def workload_to_pb(workload: Workload) -> agent_pb2.Workload:
    """The proto Workload for a snapshot."""
    spec = workload.spec
    return agent_pb2.Workload(
        workload_id=spec.workload_id,
        pool_key=spec.pool_key,
        accelerators=spec.accelerators,
        image=spec.image,
        command=spec.command,
        duration_seconds=spec.duration_seconds,
        state=STATE_VALUES[workload.state],
        created_at=timestamp_pb(workload.created_at),
        started_at=timestamp_pb(workload.started_at),
        finished_at=timestamp_pb(workload.finished_at),
        message=workload.message,
        accelerator_hours=workload.accelerator_hours,
        scheduler_state=workload.scheduler_state,
    )


def hold_from_pb(request: agent_pb2.HoldCapacityRequest) -> CapacityHold:
    """CapacityHold from a HoldCapacityRequest (both times required)."""
    for name in ("start_time", "end_time"):
        if not request.HasField(name):
            raise InvalidArgument(name, "is required")
    return CapacityHold(
        hold_id=request.hold_id,
        pool_key=request.pool_key,
        accelerators=request.accelerators,
        start=request.start_time.ToDatetime(tzinfo=UTC),
        end=request.end_time.ToDatetime(tzinfo=UTC),
    )


def hold_to_pb(hold: CapacityHold) -> agent_pb2.CapacityHold:
    """The proto CapacityHold."""
    return agent_pb2.CapacityHold(
        hold_id=hold.hold_id,
        pool_key=hold.pool_key,
        accelerators=hold.accelerators,
        nodes=hold.nodes,
        start_time=timestamp_pb(hold.start),
        end_time=timestamp_pb(hold.end),
        reference=hold.reference,
    )


# --- the servicer ----------------------------------------------------------------------------


class AgentServicer(agent_pb2_grpc.AgentServicer):
    """The site agent: reports inventory, answers benchmark challenges, runs workloads."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        workloads: WorkloadRunner,
        backend: Backend | None = None,
    ) -> None:
        self.config = config
        self.workloads = workloads
        if backend is None:
            if config.simulation is not None:
                backend = backend_for_simulation(config.simulation)
            else:
                backend = backend_for(config.backend)
        self.backend = backend
        self.store = ChallengeStore()
        self.faults = faults_for(config.simulation)

    @rpc_errors
    def GetInventory(
        self, request: agent_pb2.GetInventoryRequest, context: grpc.ServicerContext
    ) -> agent_pb2.GetInventoryResponse:
        """Describe the agent and the resource pools it fronts."""
        self.faults.check("GetInventory")
        return inventory_to_pb(build_inventory(self.config, details=self.workloads.device_details))

    @rpc_errors
    def RunBenchmark(
        self, request: agent_pb2.RunBenchmarkRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.RunBenchmarkResponse]:
        """Run every device's chain at once, streaming each step's commitment as it is done."""
        self.faults.check("RunBenchmark")
        pool = self.workloads.resolve_pool(request.pool_key)
        challenge = challenge_from_pb(request, self.config, pool)
        for event in run_challenge(challenge, pool, self.backend, self.store):
            if not context.is_active():  # the verifier gave up
                return
            yield benchmark_event_pb(event)

    @rpc_errors
    def OpenBenchmark(
        self, request: agent_pb2.OpenBenchmarkRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.OpenBenchmarkResponse]:
        """Stream the committed products the verifier asks for, in row blocks."""
        for opening in request.openings:
            product, name = self.store.get(request.challenge_id, opening.device, opening.step)
            for offset, rows, data in row_blocks(product, name, MAX_CHUNK_BYTES):
                if not context.is_active():
                    return
                yield agent_pb2.OpenBenchmarkResponse(
                    device=opening.device,
                    step=opening.step,
                    row_offset=offset,
                    rows=rows,
                    data=data,
                )

    @rpc_errors
    def StartWorkload(
        self, request: agent_pb2.StartWorkloadRequest, context: grpc.ServicerContext
    ) -> agent_pb2.StartWorkloadResponse:
        """Start a booked workload; idempotent per workload id."""
        workload, created = self.workloads.start(workload_spec_from_pb(request))
        return agent_pb2.StartWorkloadResponse(workload=workload_to_pb(workload), created=created)

    @rpc_errors
    def GetWorkload(
        self, request: agent_pb2.GetWorkloadRequest, context: grpc.ServicerContext
    ) -> agent_pb2.GetWorkloadResponse:
        """Read the current state of a workload."""
        workload = self.workloads.get(request.workload_id)
        return agent_pb2.GetWorkloadResponse(workload=workload_to_pb(workload))

    @rpc_errors
    def StopWorkload(
        self, request: agent_pb2.StopWorkloadRequest, context: grpc.ServicerContext
    ) -> agent_pb2.StopWorkloadResponse:
        """Stop a workload; one that already ended is returned unchanged."""
        workload = self.workloads.stop(
            request.workload_id, request.reason, grace_seconds=request.grace_seconds
        )
        return agent_pb2.StopWorkloadResponse(workload=workload_to_pb(workload))

    @rpc_errors
    def WatchWorkload(
        self, request: agent_pb2.WatchWorkloadRequest, context: grpc.ServicerContext
    ) -> Iterator[agent_pb2.WatchWorkloadResponse]:
        """Stream the workload's state until it ends."""
        for workload in self.workloads.watch(request.workload_id, context.is_active):
            yield agent_pb2.WatchWorkloadResponse(workload=workload_to_pb(workload))

    @rpc_errors
    def HoldCapacity(
        self, request: agent_pb2.HoldCapacityRequest, context: grpc.ServicerContext
    ) -> agent_pb2.HoldCapacityResponse:
        """Hold capacity for a booked window (a Slurm reservation under --scheduler slurm)."""
        hold, created = self.workloads.hold(hold_from_pb(request))
        return agent_pb2.HoldCapacityResponse(hold=hold_to_pb(hold), created=created)

    @rpc_errors
    def ReleaseCapacity(
        self, request: agent_pb2.ReleaseCapacityRequest, context: grpc.ServicerContext
    ) -> agent_pb2.ReleaseCapacityResponse:
        """Give a hold back; ``released`` is False for an unknown one."""
        released = self.workloads.release(request.hold_id, request.reason)
        return agent_pb2.ReleaseCapacityResponse(released=released)


# --- the server ------------------------------------------------------------------------------


@dataclass
class AgentRuntime:
    """A built (started) agent server and the parts its owner needs to stop it gracefully."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    workloads: WorkloadRunner
    config: AgentConfig
    rpc: rpc_server.Runtime | None = None

    def stop(self, grace: float | None = None) -> threading.Event:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish for ``grace`` seconds.

        Returns the event set once the server has fully stopped, so several agents in one
        process can stop in parallel.
        """
        self.health.enter_graceful_shutdown()
        self.workloads.close()
        return self.server.stop(self.config.grace_seconds if grace is None else grace)


class _PaddedHealth(health.HealthServicer):  # type: ignore[misc]  # grpc_health: no stubs
    """Health checks answered late on purpose (the cheat-rtt simulation)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self._delay = delay

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        time.sleep(self._delay)
        return super().Check(request, context)


def build_server(
    address: str,
    *,
    agent_config: AgentConfig,
    workloads: WorkloadRunner | None = None,
    backend: Backend | None = None,
) -> AgentRuntime:
    """Build and start the agent's server on ``address`` (port 0 picks a free port); ``backend``
    replaces the one the configuration selects (tests play provers the modes do not cover).

    With ``tls_dir`` set, the server speaks mutual TLS only: the caller must present a
    certificate of the platform's authority that names the platform (``rpckit.tls``), and a
    renewed ``agent.pem``/``agent.key`` is served from the next connection on.
    """
    workloads = workloads or WorkloadRunner(
        agent_config.pools,
        time_scale=agent_config.time_scale,
        startup_seconds=agent_config.workload_startup_seconds,
    )
    delay = health_delay(agent_config.simulation)
    tls = None
    interceptors: list[grpc.ServerInterceptor] = []
    if agent_config.tls_dir:
        files = agent_cert_files(agent_config)
        tls = ServerTls(files=files, require_client_auth=True)
        interceptors.append(PeerIdentityInterceptor(PLATFORM_URI))
        warning = expiry_warning(files.read())
        if warning:
            logger.warning("agent %s: %s", agent_config.agent_id, warning)
    runtime = rpc_server.build_server(
        address,
        name=agent_config.agent_id,
        services=[
            Service(
                AGENT_SERVICE,
                agent_pb2_grpc.add_AgentServicer_to_server,
                AgentServicer(agent_config, workloads=workloads, backend=backend),
            )
        ],
        max_workers=agent_config.max_workers,
        max_message_bytes=agent_config.max_message_bytes,
        interceptors=interceptors,
        tls=tls,
        health_servicer=_PaddedHealth(delay) if delay else None,
        grace_seconds=agent_config.grace_seconds,
    )
    return AgentRuntime(
        server=runtime.server,
        port=runtime.port,
        health=runtime.health,
        workloads=workloads,
        config=agent_config,
        rpc=runtime,
    )


def agent_cert_files(config: AgentConfig) -> CertFiles:
    """The agent's certificate, key and the platform authority's bundle in ``tls_dir``."""
    return CertFiles.in_dir(config.tls_dir, "agent")


def create_server(address: str, *, agent_config: AgentConfig) -> tuple[grpc.Server, int]:
    """Build and start the agent's server; returns it and the bound port (tests bind port 0)."""
    runtime = build_server(address, agent_config=agent_config)
    return runtime.server, runtime.port
