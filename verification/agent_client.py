"""The verifier's side of the agent contract (``protos/agent.proto``): one call per method.

Protobuf stops here: callers get plain dataclasses. gRPC errors are classified in two places.
Before the challenge is sent (health check, inventory), :func:`classify`: UNAVAILABLE and
DEADLINE_EXCEEDED are transient (``AgentUnavailable``: the task retries with a fresh plan), the
rest permanent (``VerificationRefuted``). Once ``RunBenchmark`` is sent the agent knows which
nodes are sampled, and the ``OpenBenchmark`` request tells it which steps are checked: a retry
would draw both again, so every failure from then on, transient statuses included, is permanent
and names its check (:func:`abandoned`; docs/verification.md, "Threat model").

Nothing the agent streams is kept beyond what the challenge asked for: a message that breaks the
stream's rules ends the call at once (``commitments``, ``bad data``), so a center cannot fill the
shared worker's memory. The channel is opened by the caller inside the worker process, never at
import time, because Celery forks its pool after importing tasks.
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

from agent.challenge import precision as precision_of
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
# Attestation reports larger than this are refused (the run fails on ``commitments``): a report
# is kept with the run, one per challenged device.
MAX_ATTESTATION_BYTES = 64 * 1024
# A commitment is a SHA-256 digest.
DIGEST_BYTES = 32


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
    commitment (perf_counter, this process): the only times the verdict uses. ``problems`` holds
    the first departure from the stream's rules, if any (reading stopped there), or the steps
    that never came.
    """

    digests: dict[tuple[int, int], bytes] = field(default_factory=dict)
    arrivals: dict[tuple[int, int], float] = field(default_factory=dict)
    reports: dict[int, dict[str, object]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # The verifier's deadline passed with the stream still open (commitments may be missing).
    timed_out: bool = False


def classify(exc: grpc.RpcError, what: str) -> Exception:
    """The domain error for a failed call made before the challenge is sent: transient or
    permanent."""
    code = exc.code()
    details = exc.details()
    message = f"{what}: {code.name} {details or ''}".strip()
    if code in TRANSIENT_CODES:
        return AgentUnavailable(message)
    return VerificationRefuted(message)


def abandoned(exc: grpc.RpcError, check: str, what: str) -> VerificationRefuted:
    """The verdict on a challenge the agent did not see through, whatever the status.

    Once the request is sent the agent has seen the draw (the sampled nodes, then the checked
    steps); were UNAVAILABLE transient, a cheater would answer it whenever the draw would catch
    it and get a fresh plan on the retry. An honest agent cut off by the network fails too; its
    operator resubmits (docs/verification.md, "Threat model").
    """
    code = exc.code()
    name = code.name if code is not None else "UNKNOWN"
    return VerificationRefuted(f"{check}: {what} ({name} {exc.details() or ''}".strip() + ")")


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

    A NOT_SERVING agent is treated as unavailable (it may be restarting). ``timeout`` bounds
    the checks together, not each: an agent cannot multiply the wait by answering slowly.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    best = float("inf")
    until = time.monotonic() + timeout
    for _ in range(PINGS):
        started = time.perf_counter()
        remaining = until - time.monotonic()
        if remaining <= 0:
            raise AgentUnavailable(f"health check: no answers within {timeout:g} s")
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=remaining)
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

    Each message is checked as it arrives: each device's steps must arrive as 1, 2, ... once
    each, with a 32-byte digest; at most one report per challenged device, its attestation within
    ``MAX_ATTESTATION_BYTES``. The first departure is recorded in ``problems`` (the verdict
    refuses it on ``commitments``) and ends the call, so what is kept is bounded by the
    challenge, whatever the agent sends. Past the deadline the answer is ``timed_out`` (judged on
    ``throughput``); any other failure of the call is the run's failure (:func:`abandoned`).
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
    call = agent_pb2_grpc.AgentStub(channel).RunBenchmark(request, timeout=timeout)
    try:
        for message in call:
            now = time.perf_counter() - started
            problem = _take(message, answer, expected, steps, nonce, now)
            if problem:
                answer.problems.append(problem)
                call.cancel()  # read no further: the run fails on this
                return answer
    except grpc.RpcError as exc:
        if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
            raise abandoned(exc, "commitments", "the agent did not finish the challenge") from exc
        # Past the deadline: a slow answer, judged on what came (nothing, perhaps).
        answer.timed_out = True
    for device, due in expected.items():
        if due <= steps:
            answer.problems.append(f"device {device}: {steps - due + 1} of {steps} steps missing")
    return answer


def _take(
    message: agent_pb2.RunBenchmarkResponse,
    answer: BenchmarkAnswer,
    expected: dict[int, int],
    steps: int,
    nonce: bytes,
    now: float,
) -> str:
    """Keep one message of the RunBenchmark stream; the rule it breaks, or "" if none."""
    kind = message.WhichOneof("payload")
    if kind == "commitment":
        c = message.commitment
        if c.device not in expected:
            return f"commitment for device {c.device}, not challenged"
        if c.step != expected[c.device] or c.step > steps:
            return (
                f"device {c.device}: step {c.step} arrived when step {expected[c.device]} was due"
            )
        if len(c.digest) != DIGEST_BYTES:
            return (
                f"device {c.device}: step {c.step} committed {len(c.digest)} bytes, not a SHA-256"
            )
        expected[c.device] += 1
        answer.digests[(c.device, c.step)] = bytes(c.digest)
        answer.arrivals[(c.device, c.step)] = now
    elif kind == "report":
        r = message.report
        if r.device not in expected:
            return f"report for device {r.device}, not challenged"
        if r.device in answer.reports:
            return f"device {r.device}: a second report"
        if len(r.attestation) > MAX_ATTESTATION_BYTES:
            return (
                f"device {r.device}: an attestation report of {len(r.attestation)} bytes, over "
                f"the {MAX_ATTESTATION_BYTES} allowed"
            )
        answer.reports[r.device] = {
            "description": r.description[:200],
            "attestation_format": r.attestation_format[:50],
            "attestation_sha256": hashlib.sha256(r.attestation).hexdigest()
            if r.attestation
            else "",
            "attestation_bytes": len(r.attestation),
            # The report itself, kept with the run (bounded); its vendor signature is not
            # checked here (docs/verification.md, "Attestation").
            "attestation_b64": base64.b64encode(r.attestation).decode(),
            # Bound to this challenge: the report contains the verifier's fresh nonce.
            "attestation_has_nonce": bool(nonce) and nonce in r.attestation,
        }
    return ""


def open_benchmark(
    channel: grpc.Channel,
    *,
    challenge_id: str,
    openings: list[tuple[int, int]],
    n: int,
    precision: str,
    timeout: float,
) -> dict[tuple[int, int], list[tuple[int, int, bytes]]]:
    """Ask for committed products; their row blocks by (device, step).

    Each block is checked as it arrives, and the first that breaks the rules ends the call with
    ``bad data``: a (device, step) not asked for, rows outside 0..n or already received, bytes
    that are not ``rows`` rows of n values of the precision's accumulator. What is kept is then
    at most the products asked for (``len(openings) x n^2 x itemsize`` bytes), whatever the agent
    sends. Any failure of the call, transient statuses and the deadline included, fails the
    opening (:func:`abandoned`): the request told the agent which steps are checked.
    """
    request = agent_pb2.OpenBenchmarkRequest(
        challenge_id=challenge_id,
        openings=[agent_pb2.StepOpening(device=d, step=s) for d, s in openings],
    )
    row_bytes = n * precision_of(precision).accumulator.itemsize
    blocks: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {key: [] for key in openings}
    # Rows received so far, per product (1 = received): an overlap is refused when it arrives.
    received = {key: bytearray(n) for key in blocks}
    budget = len(blocks) * n * row_bytes
    call = agent_pb2_grpc.AgentStub(channel).OpenBenchmark(request, timeout=timeout)
    try:
        for m in call:
            key, offset, rows = (m.device, m.step), m.row_offset, m.rows
            problem = ""
            if key not in blocks:
                problem = "not asked"
            elif rows < 1 or offset + rows > n:  # offsets are unsigned: never below 0
                problem = f"rows {offset}..{offset + rows} outside 0..{n}"
            elif len(m.data) != rows * row_bytes:
                problem = f"block at row {offset} has {len(m.data)} bytes, not {rows}x{n} values"
            elif received[key].find(1, offset, offset + rows) != -1:
                problem = f"rows {offset}..{offset + rows} overlap rows already received"
            elif len(m.data) > budget:  # implied by the rules above; kept as the bound itself
                problem = "more bytes than the products asked for"
            if problem:
                call.cancel()  # read no further
                raise VerificationRefuted(f"bad data: device {m.device} step {m.step}: {problem}")
            received[key][offset : offset + rows] = b"\x01" * rows
            budget -= len(m.data)
            blocks[key].append((offset, rows, m.data))
    except grpc.RpcError as exc:
        # An agent that cannot (or will not, in time) reveal what it committed fails the opening:
        # an honest one ends its chains a moment after its last commitment.
        raise abandoned(exc, "opening", "the agent did not open the products it committed") from exc
    return blocks
