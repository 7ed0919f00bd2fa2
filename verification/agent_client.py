"""The verifier's side of the agent contract (``protos/agent.proto``): one call per method.

Protobuf stops here: callers get plain dataclasses. gRPC errors are classified in one place,
:func:`classify`: UNAVAILABLE and DEADLINE_EXCEEDED are transient (``AgentUnavailable``), the rest
permanent (``VerificationRefuted``). The channel is opened by the caller inside the worker process,
never at import time, because Celery forks its pool after importing tasks.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import agent_pb2, agent_pb2_grpc
from verification.errors import AgentUnavailable, VerificationRefuted

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
DTYPE_VALUES = {
    "bf16": agent_pb2.DTYPE_BFLOAT16,
    "fp16": agent_pb2.DTYPE_FLOAT16,
    "fp32": agent_pb2.DTYPE_FLOAT32,
    "fp64": agent_pb2.DTYPE_FLOAT64,
}
# Chunks are under 1 MiB by contract; 4 MiB matches the agent's explicit limit.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PINGS = 3
# Attestation reports larger than this are stored by hash only.
MAX_ATTESTATION_BYTES = 64 * 1024


@dataclass(frozen=True)
class InventoryPool:
    """One pool as the agent reports it."""

    pool_key: str
    accelerator_model: str
    accelerators_per_node: int
    nodes: int
    declared_tflops_per_accelerator: float
    device_details: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inventory:
    """What the agent says it fronts."""

    agent_id: str
    agent_version: str
    simulated: bool
    pools: tuple[InventoryPool, ...]


@dataclass
class BenchmarkAnswer:
    """The agent's commitments, each stamped with the verifier's own clock.

    ``arrivals[(device, step)]`` is the time from sending the request to receiving that step's
    commitment (perf_counter, this process): the only times the verdict uses.
    """

    digests: dict[tuple[int, int], bytes] = field(default_factory=dict)
    arrivals: dict[tuple[int, int], float] = field(default_factory=dict)
    reports: dict[int, dict[str, object]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # The verifier's deadline passed with the stream still open (commitments may be missing).
    timed_out: bool = False


def classify(exc: grpc.RpcError, what: str) -> Exception:
    """The domain error for a failed call: transient or permanent."""
    code = exc.code()
    details = exc.details()
    message = f"{what}: {code.name} {details or ''}".strip()
    if code in TRANSIENT_CODES:
        return AgentUnavailable(message)
    return VerificationRefuted(message)


@contextmanager
def agent_channel(
    endpoint: str,
    *,
    options: list[tuple[str, str]] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> Iterator[grpc.Channel]:
    """A channel to an agent, closed on exit (mutual TLS with ``credentials``). Call inside the
    worker process (after fork)."""
    limits = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *(options or []),
    ]
    channel = (
        grpc.insecure_channel(endpoint, options=limits)
        if credentials is None
        else grpc.secure_channel(endpoint, credentials, options=limits)
    )
    try:
        yield channel
    finally:
        channel.close()


def round_trip_ms(channel: grpc.Channel, *, timeout: float) -> float:
    """Best of a few health checks, in ms: evidence of the network's share of the wall time.
    Never subtracted from a timing (the agent could pad it).

    A NOT_SERVING agent is treated as unavailable (it may be restarting).
    """
    stub = health_pb2_grpc.HealthStub(channel)
    best = float("inf")
    for _ in range(PINGS):
        started = time.perf_counter()
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError as exc:
            raise classify(exc, "health check") from exc
        best = min(best, time.perf_counter() - started)
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            raise AgentUnavailable("health check: agent is not serving")
    return best * 1000.0


def get_inventory(channel: grpc.Channel, *, timeout: float) -> Inventory:
    """The agent's inventory."""
    try:
        pb = agent_pb2_grpc.AgentStub(channel).GetInventory(
            agent_pb2.GetInventoryRequest(), timeout=timeout
        )
    except grpc.RpcError as exc:
        raise classify(exc, "GetInventory") from exc
    return Inventory(
        agent_id=pb.agent_id,
        agent_version=pb.agent_version,
        simulated=pb.simulated,
        pools=tuple(
            InventoryPool(
                pool_key=p.pool_key,
                accelerator_model=p.accelerator_model,
                accelerators_per_node=p.accelerators_per_node,
                nodes=p.nodes,
                declared_tflops_per_accelerator=p.declared_tflops_per_accelerator,
                device_details=tuple(p.device_details),
            )
            for p in pb.pools
        ),
    )


def run_benchmark(
    channel: grpc.Channel,
    *,
    n: int,
    dtype: str,
    steps: int,
    devices: dict[int, int],
    pool_key: str,
    challenge_id: str,
    nonce: bytes,
    timeout: float,
    inner: int = 1,
) -> BenchmarkAnswer:
    """Send a challenge and collect the commitments with their arrival times on our clock.

    Order is checked as the stream goes: each device's steps must arrive as 1, 2, ... once each;
    a departure is recorded in ``problems`` (the verdict refuses it) rather than raised, so the
    evidence keeps what came.
    """
    request = agent_pb2.RunBenchmarkRequest(
        n=n,
        dtype=DTYPE_VALUES[dtype],
        steps=steps,
        devices=[agent_pb2.DeviceChallenge(device=d, seed=s) for d, s in sorted(devices.items())],
        pool_key=pool_key,
        challenge_id=challenge_id,
        nonce=nonce,
        inner=inner,
    )
    answer = BenchmarkAnswer()
    expected = dict.fromkeys(devices, 1)
    started = time.perf_counter()
    try:
        for message in agent_pb2_grpc.AgentStub(channel).RunBenchmark(request, timeout=timeout):
            now = time.perf_counter() - started
            kind = message.WhichOneof("payload")
            if kind == "commitment":
                c = message.commitment
                if c.device not in expected:
                    answer.problems.append(f"commitment for device {c.device}, not challenged")
                elif c.step != expected[c.device] or c.step > steps:
                    answer.problems.append(
                        f"device {c.device}: step {c.step} arrived when step "
                        f"{expected[c.device]} was due"
                    )
                else:
                    expected[c.device] += 1
                    answer.digests[(c.device, c.step)] = bytes(c.digest)
                    answer.arrivals[(c.device, c.step)] = now
            elif kind == "report":
                r = message.report
                answer.reports[r.device] = {
                    "description": r.description[:200],
                    "attestation_format": r.attestation_format[:50],
                    "attestation_sha256": hashlib.sha256(r.attestation).hexdigest()
                    if r.attestation
                    else "",
                    "attestation_bytes": len(r.attestation),
                    # The report itself, kept with the run (bounded); its vendor signature is
                    # not checked here (docs/verification.md, "Attestation").
                    "attestation_b64": base64.b64encode(r.attestation).decode()
                    if 0 < len(r.attestation) <= MAX_ATTESTATION_BYTES
                    else "",
                    # Bound to this challenge: the report contains the verifier's fresh nonce.
                    "attestation_has_nonce": bool(nonce) and nonce in r.attestation,
                }
    except grpc.RpcError as exc:
        # Past the deadline with commitments in hand: a slow answer, judged on what came.
        if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED or not answer.arrivals:
            raise classify(exc, "RunBenchmark") from exc
        answer.timed_out = True
    for device, due in expected.items():
        if due <= steps:
            answer.problems.append(f"device {device}: {steps - due + 1} of {steps} steps missing")
    return answer


def open_benchmark(
    channel: grpc.Channel,
    *,
    challenge_id: str,
    openings: list[tuple[int, int]],
    timeout: float,
) -> dict[tuple[int, int], list[tuple[int, int, bytes]]]:
    """Ask for committed products; their row blocks by (device, step)."""
    request = agent_pb2.OpenBenchmarkRequest(
        challenge_id=challenge_id,
        openings=[agent_pb2.StepOpening(device=d, step=s) for d, s in openings],
    )
    wanted = set(openings)
    blocks: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {key: [] for key in openings}
    try:
        for m in agent_pb2_grpc.AgentStub(channel).OpenBenchmark(request, timeout=timeout):
            key = (m.device, m.step)
            if key not in wanted:
                raise VerificationRefuted(f"bad data: device {m.device} step {m.step} not asked")
            blocks[key].append((m.row_offset, m.rows, m.data))
    except grpc.RpcError as exc:
        # An agent that cannot (or will not, in time) reveal what it committed fails the opening:
        # an honest one ends its chains a moment after its last commitment.
        refused = (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        if exc.code() in refused:
            raise VerificationRefuted(
                f"opening: the agent cannot reveal the products it committed ({exc.details()})"
            ) from exc
        raise classify(exc, "OpenBenchmark") from exc
    return blocks
