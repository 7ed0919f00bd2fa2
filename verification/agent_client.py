"""The verifier's side of the agent contract (``protos/agent.proto``): one call per method.

Protobuf stops here: callers get plain dataclasses. gRPC errors are classified in one place,
:func:`classify`: UNAVAILABLE and DEADLINE_EXCEEDED are transient (``AgentUnavailable``), the rest
permanent (``VerificationRefuted``). The channel is opened by the caller inside the worker process,
never at import time, because Celery forks its pool after importing tasks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import agent_pb2, agent_pb2_grpc
from verification.errors import AgentUnavailable, VerificationRefuted

TRANSIENT_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
DTYPE_VALUES = {"float32": agent_pb2.DTYPE_FLOAT32, "float64": agent_pb2.DTYPE_FLOAT64}
# Chunks are under 1 MiB by contract; 4 MiB matches the agent's explicit limit.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PINGS = 3


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
    """The agent's answer to a challenge, with the verifier's own clock reading.

    ``wall_to_first_message_seconds`` runs from sending the request to receiving the summary,
    which the agent sends only after computing: it bounds the compute time the agent may claim.
    """

    compute_seconds: float
    device: str
    n: int
    dtype: str
    repetitions: int
    chunk_count: int
    wall_to_first_message_seconds: float
    blocks: list[tuple[int, int, bytes]] = field(default_factory=list)


def classify(exc: grpc.RpcError, what: str) -> Exception:
    """The domain error for a failed call: transient or permanent."""
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details()  # type: ignore[attr-defined]
    message = f"{what}: {code.name} {details or ''}".strip()
    if code in TRANSIENT_CODES:
        return AgentUnavailable(message)
    return VerificationRefuted(message)


@contextmanager
def agent_channel(endpoint: str) -> Iterator[grpc.Channel]:
    """A channel to an agent, closed on exit. Call inside the worker process (after fork)."""
    channel = grpc.insecure_channel(
        endpoint,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    try:
        yield channel
    finally:
        channel.close()


def round_trip_ms(channel: grpc.Channel, *, timeout: float) -> float:
    """Best of a few health checks, in ms: the network share of any later call's wall time.

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
    seed: int,
    n: int,
    dtype: str,
    repetitions: int,
    pool_key: str,
    challenge_id: str,
    timeout: float,
) -> BenchmarkAnswer:
    """Send a challenge and collect the streamed answer (summary first, then row blocks)."""
    request = agent_pb2.RunBenchmarkRequest(
        seed=seed,
        n=n,
        dtype=DTYPE_VALUES[dtype],
        repetitions=repetitions,
        pool_key=pool_key,
        challenge_id=challenge_id,
    )
    started = time.perf_counter()
    answer: BenchmarkAnswer | None = None
    try:
        for message in agent_pb2_grpc.AgentStub(channel).RunBenchmark(request, timeout=timeout):
            kind = message.WhichOneof("payload")
            if answer is None:
                if kind != "summary":
                    raise VerificationRefuted("benchmark: the first message is not a summary")
                s = message.summary
                answer = BenchmarkAnswer(
                    compute_seconds=s.compute_seconds,
                    device=s.device,
                    n=s.n,
                    dtype={v: k for k, v in DTYPE_VALUES.items()}.get(s.dtype, "unknown"),
                    repetitions=s.repetitions,
                    chunk_count=s.chunk_count,
                    wall_to_first_message_seconds=time.perf_counter() - started,
                )
            elif kind == "chunk":
                c = message.chunk
                answer.blocks.append((c.row_offset, c.rows, c.data))
            else:
                raise VerificationRefuted("benchmark: a second summary in the stream")
    except grpc.RpcError as exc:
        raise classify(exc, "RunBenchmark") from exc
    if answer is None:
        raise VerificationRefuted("benchmark: the agent sent no answer")
    return answer
