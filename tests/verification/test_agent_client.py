"""The verifier's side of the agent contract against agents that break it on purpose.

Each adversary is the real agent (``agent.server.AgentServicer``, simulated honest chains) on a
real gRPC server on loopback, with one method changed the way a motivated center would change
it: refuse the challenge once it has seen the draw (a free redraw, were that retried), or flood
the stream to exhaust the shared worker's memory. Each test proves the fault landed (the agent
did see the request and abort; the duplicates were sent) and that the verifier stopped it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

import agent.server as agent_server
from agent.challenge import precision
from agent.config import AgentConfig
from protos import agent_pb2
from registry import services as registry_services
from registry.choices import Door, Status
from registry.models import Pool
from tests.conftest import force_status
from tests.verification.conftest import agent_config, wait_finished, wait_for
from verification import agent_client, services
from verification.choices import RunState, Trigger
from verification.errors import VerificationRefuted
from verification.models import VerificationRun

ABANDONED_OPENING = "opening: the agent did not open the products it committed"
ABANDONED_CHALLENGE = "commitments: the agent did not finish the challenge"


@dataclass
class Log:
    """What an adversary did, as its server saw it."""

    challenges: int = 0  # RunBenchmark requests received
    openings: list[list[tuple[int, int]]] = field(default_factory=list)  # OpenBenchmark asks
    aborted: int = 0  # calls it ended with a status of its own
    sent: int = 0  # messages of its flood handed to gRPC
    ended: threading.Event = field(default_factory=threading.Event)  # the call ended, any way


@dataclass
class Adversary:
    endpoint: str
    log: Log


Start = Callable[..., Adversary]


@pytest.fixture
def adversary() -> Iterator[Start]:
    """Start the real agent with some of its methods replaced (``name=function``; the other
    keywords become class attributes the functions read); returns its endpoint and log."""
    runtimes: list[agent_server.AgentRuntime] = []

    def start(config: AgentConfig | None = None, **attributes: Any) -> Adversary:
        log = Log()
        cls = type("Adversary", (agent_server.AgentServicer,), {"log": log, **attributes})
        with pytest.MonkeyPatch.context() as patch:  # build_server instantiates AgentServicer
            patch.setattr(agent_server, "AgentServicer", cls)
            runtime = agent_server.build_server(
                "127.0.0.1:0", agent_config=config or agent_config()
            )
        runtimes.append(runtime)
        return Adversary(f"127.0.0.1:{runtime.port}", log)

    yield start
    for runtime in runtimes:
        runtime.stop(grace=0).wait()


HONEST_RUN = agent_server.AgentServicer.RunBenchmark
HONEST_OPEN = agent_server.AgentServicer.OpenBenchmark


def _counted_run(self: Any, request: Any, context: Any) -> Iterator[Any]:
    self.log.challenges += 1
    yield from HONEST_RUN(self, request, context)


def _abort(self: Any, context: Any, code: grpc.StatusCode) -> None:
    self.log.aborted += 1
    context.abort(code, "node rebooting, try later")


# --- refusing the challenge once the draw is known: no redraw ------------------------------------


def open_then_abort(self: Any, request: Any, context: Any) -> Iterator[Any]:
    """Sees which steps are checked, then refuses (``how``), as a cheater does when the draw
    would catch it."""
    self.log.openings.append([(o.device, o.step) for o in request.openings])
    if self.how == "unavailable":
        _abort(self, context, grpc.StatusCode.UNAVAILABLE)
    elif self.how == "broken-stream":  # a block or two, then the stream breaks
        for i, message in enumerate(HONEST_OPEN(self, request, context)):
            if i == 2:
                _abort(self, context, grpc.StatusCode.UNAVAILABLE)
            yield message
    elif self.how == "stall":  # holds the call past the verifier's deadline
        self.log.aborted += 1
        time.sleep(self.stall_seconds)
    else:
        _abort(self, context, grpc.StatusCode.INTERNAL)
    yield from ()


def run_then_abort(self: Any, request: Any, context: Any) -> Iterator[Any]:
    """Sees which nodes are sampled, streams ``after`` commitments, then refuses."""
    self.log.challenges += 1
    for i, message in enumerate(HONEST_RUN(self, request, context)):
        if i == self.after:
            _abort(self, context, grpc.StatusCode.UNAVAILABLE)
        yield message


def run_once(pool: Pool) -> VerificationRun:
    """One delivery of the task, not its last: a transient error would raise AgentUnavailable
    (and the task would retry with a fresh plan)."""
    run, _ = services.verification_request(
        pool=pool, trigger=Trigger.SUBMITTED, actor=None, door=Door.WORKER
    )
    services.verification_run(run_id=str(run.run_id), final_attempt=False)
    run.refresh_from_db()
    return run


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("how", "status"),
    [
        ("unavailable", "UNAVAILABLE"),
        ("broken-stream", "UNAVAILABLE"),
        ("stall", "DEADLINE_EXCEEDED"),
        ("internal", "INTERNAL"),
    ],
)
def test_an_agent_that_refuses_the_opening_fails_the_run_without_a_redraw(
    how: str, status: str, adversary: Start, pool_at: Any, acme: Any, settings: Any
) -> None:
    settings.VERIFICATION_RPC_TIMEOUT = 2.0  # the stalling agent holds the call for 4 s
    agent = adversary(
        RunBenchmark=_counted_run, OpenBenchmark=open_then_abort, how=how, stall_seconds=4.0
    )
    pool = force_status(pool_at(acme, agent.endpoint), Status.SUBMITTED)

    run = run_once(pool)  # raised nothing: no retry

    assert agent.log.challenges == 1 and len(agent.log.openings) == 1 and agent.log.aborted == 1
    assert run.state == RunState.FAILED and run.attempts == 1
    assert run.verdict_reason.startswith(f"{ABANDONED_OPENING} ({status}"), run.verdict_reason
    pool.refresh_from_db()
    assert pool.status == Status.FAILED and pool.measured_tflops_per_accelerator is None


@pytest.mark.django_db
@pytest.mark.parametrize("after", [0, 5])
def test_an_agent_that_refuses_the_challenge_once_it_saw_the_nodes_fails_the_run(
    after: int, adversary: Start, pool_at: Any, acme: Any
) -> None:
    agent = adversary(RunBenchmark=run_then_abort, after=after)
    pool = force_status(pool_at(acme, agent.endpoint), Status.SUBMITTED)

    run = run_once(pool)

    assert agent.log.challenges == 1 and agent.log.aborted == 1
    assert run.state == RunState.FAILED and run.attempts == 1
    assert run.verdict_reason.startswith(f"{ABANDONED_CHALLENGE} (UNAVAILABLE"), run.verdict_reason


def run_stalled(self: Any, request: Any, context: Any) -> Iterator[Any]:
    self.log.challenges += 1
    time.sleep(self.stall_seconds)
    yield from ()


@pytest.mark.django_db
def test_an_agent_that_holds_the_challenge_past_its_deadline_fails_on_throughput(
    adversary: Start, pool_at: Any, acme: Any, settings: Any, monkeypatch: Any
) -> None:
    """No commitment before the verifier's deadline: too slow, judged (it was a retry before)."""
    settings.VERIFICATION_TARGET_SECONDS = 0.3
    monkeypatch.setattr(services, "BENCHMARK_DEADLINE_SLACK", 0.5)  # deadline ~1.1 s
    agent = adversary(RunBenchmark=run_stalled, stall_seconds=3.0)
    pool = force_status(pool_at(acme, agent.endpoint), Status.SUBMITTED)

    run = run_once(pool)

    assert agent.log.challenges == 1
    assert run.state == RunState.FAILED and run.attempts == 1
    assert run.verdict_reason.startswith("throughput: device"), run.verdict_reason
    assert f"committed 0 of {run.steps} steps" in run.verdict_reason


@pytest.mark.django_db
def test_a_real_agent_that_dies_before_the_opening_fails_the_run(
    agent_process: Any, pool_at: Any, acme: Any, monkeypatch: Any
) -> None:
    """The trade-off, with an honest ``python -m agent`` process: killed (SIGKILL) after its
    last commitment and before the opening, it fails the run (its operator resubmits); the
    verifier cannot tell it from a cheater that drops the connection when the draw is bad."""
    endpoint = agent_process(
        "--simulate",
        "honest",
        "--time-scale",
        "1e-7",
        "--model",
        "nvidia-a100-80g",
        "--accelerators",
        "8",
        "--nodes",
        "1",
        "--declared-tflops",
        "312",
    )
    process = agent_process.processes[-1]
    honest_open = agent_client.open_benchmark

    def kill_then_open(channel: Any, **kwargs: Any) -> Any:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        return honest_open(channel, **kwargs)

    monkeypatch.setattr(agent_client, "open_benchmark", kill_then_open)
    pool = force_status(pool_at(acme, endpoint, nodes=1), Status.SUBMITTED)

    run = run_once(pool)

    assert process.returncode == -signal.SIGKILL
    assert run.state == RunState.FAILED and run.attempts == 1
    assert run.verdict_reason.startswith(f"{ABANDONED_OPENING} (UNAVAILABLE"), run.verdict_reason
    assert len(run.devices) == 8 and all(d["seconds"] for d in run.devices)  # all committed


@pytest.mark.django_db
def test_an_agent_restarting_before_the_challenge_is_still_retried(
    adversary: Start, pool_at: Any, acme: Any
) -> None:
    """What stays transient: a failure before the challenge is sent (here GetInventory)."""
    from verification.errors import AgentUnavailable

    def inventory_unavailable(self: Any, request: Any, context: Any) -> Any:
        _abort(self, context, grpc.StatusCode.UNAVAILABLE)

    agent = adversary(GetInventory=inventory_unavailable, RunBenchmark=_counted_run)
    pool = force_status(pool_at(acme, agent.endpoint), Status.SUBMITTED)
    run, _ = services.verification_request(
        pool=pool, trigger=Trigger.SUBMITTED, actor=None, door=Door.WORKER
    )

    with pytest.raises(AgentUnavailable):
        services.verification_run(run_id=str(run.run_id), final_attempt=False)

    run.refresh_from_db()
    assert run.state == RunState.QUEUED and agent.log.aborted == 1
    assert agent.log.challenges == 0  # nothing was drawn, nothing was shown


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_through_the_worker_an_aborted_opening_is_delivered_once(
    celery_worker: Any, adversary: Start, pool_at: Any, alice: Any
) -> None:
    """The review's redraw, through the real Celery task: the agent answers UNAVAILABLE to the
    opening; the task does not retry (a retry drew new nodes, seeds and steps, 6 times a run)."""
    agent = adversary(RunBenchmark=_counted_run, OpenBenchmark=open_then_abort, how="unavailable")
    pool = pool_at(alice.membership.organization, agent.endpoint)
    registry_services.pool_submit(pool=pool, actor=alice, door=Door.API)
    run = wait_for(lambda: VerificationRun.objects.filter(pool=pool).first(), what="a queued run")

    run = wait_finished(run)

    assert run.state == RunState.FAILED and run.attempts == 1, run.verdict_reason
    assert run.verdict_reason.startswith(f"{ABANDONED_OPENING} (UNAVAILABLE"), run.verdict_reason
    assert agent.log.challenges == 1 and len(agent.log.openings) == 1 and agent.log.aborted == 1
    pool.refresh_from_db()
    assert pool.status == Status.FAILED


# --- flooding the verifier: nothing kept beyond what the challenge asked for --------------------

FLOOD = 3000  # messages an adversary tries to send; the verifier must stop it far earlier
ATTESTATION = b"\0" * (60 * 1024)


def flood_run(self: Any, request: Any, context: Any) -> Iterator[Any]:
    """The RunBenchmark stream a flooder sends (``what``), ``FLOOD`` messages, counted."""
    context.add_callback(self.log.ended.set)
    self.log.challenges += 1
    challenged = request.devices[0].device
    for i in range(FLOOD):
        if self.what == "foreign-reports":
            message = agent_pb2.RunBenchmarkResponse(
                report=agent_pb2.DeviceReport(
                    device=100_000 + i, description="x" * 200, attestation=ATTESTATION
                )
            )
        elif self.what == "duplicate-reports":
            message = agent_pb2.RunBenchmarkResponse(
                report=agent_pb2.DeviceReport(device=challenged, attestation=ATTESTATION)
            )
        elif self.what == "huge-attestation":
            message = agent_pb2.RunBenchmarkResponse(
                report=agent_pb2.DeviceReport(
                    device=challenged, attestation=b"\0" * (agent_client.MAX_ATTESTATION_BYTES + 1)
                )
            )
        else:  # huge-digest: 1 MiB "commitments"
            message = agent_pb2.RunBenchmarkResponse(
                commitment=agent_pb2.StepCommitment(
                    device=challenged, step=1, digest=b"\0" * (1024 * 1024)
                )
            )
        self.log.sent += 1  # handed to gRPC next (the verifier's problem says what arrived)
        yield message


@pytest.mark.parametrize(
    ("what", "problem"),
    [
        ("foreign-reports", "report for device 100000, not challenged"),
        ("duplicate-reports", "device 0: a second report"),
        ("huge-attestation", "device 0: an attestation report of 65537 bytes, over the 65536"),
        ("huge-digest", "device 0: step 1 committed 1048576 bytes, not a SHA-256"),
    ],
)
def test_a_benchmark_stream_that_breaks_the_rules_is_read_no_further(
    what: str, problem: str, adversary: Start
) -> None:
    agent = adversary(RunBenchmark=flood_run, what=what)

    with agent_client.agent_channel(agent.endpoint) as channel:
        answer = agent_client.run_benchmark(
            channel,
            n=64,
            dtype="fp32",
            steps=4,
            devices={0: 1},
            pool_key="nvidia-a100-80g",
            challenge_id="flood",
            nonce=b"n" * 32,
            timeout=30.0,
        )
        assert agent.log.ended.wait(10), "the verifier never ended the call"

    # The flood was sent (the problem names what arrived; a duplicate after its first)...
    assert agent.log.sent >= (2 if what == "duplicate-reports" else 1)
    # ... and stopped far short of what the agent had: nothing of it was kept.
    assert agent.log.sent < FLOOD // 10, agent.log.sent
    print(f"{what}: {agent.log.sent} of {FLOOD} messages produced before the call ended")
    assert answer.problems == [problem] or answer.problems[0].startswith(problem), answer.problems
    assert len(answer.problems) == 1
    kept = set(answer.reports) - {0}
    assert not kept and not answer.digests
    if what == "duplicate-reports":
        assert len(answer.reports) == 1  # the first report, bounded, and nothing after it


N = 512  # fp32: rows of 2 KiB, ~1 MiB blocks of 504 rows (MAX_CHUNK_BYTES)
ROWS = 504


def flood_open(self: Any, request: Any, context: Any) -> Iterator[Any]:
    """The OpenBenchmark stream a flooder sends (``what``), ``FLOOD`` messages, counted."""
    context.add_callback(self.log.ended.set)
    self.log.openings.append([(o.device, o.step) for o in request.openings])
    row = N * 4
    for i in range(FLOOD):
        if self.what == "duplicate-blocks":  # rows 0..504 of the product, over and over
            fields = {
                "device": 0,
                "step": 1,
                "row_offset": 0,
                "rows": ROWS,
                "data": bytes(ROWS * row),
            }
        elif self.what == "overlapping-blocks":  # each block one row past the last: overlaps
            fields = {
                "device": 0,
                "step": 1,
                "row_offset": i % 8,
                "rows": ROWS,
                "data": bytes(ROWS * row),
            }
        elif self.what == "not-asked":
            fields = {
                "device": 7,
                "step": 1,
                "row_offset": 0,
                "rows": ROWS,
                "data": bytes(ROWS * row),
            }
        else:  # oversized: one row announced, a megabyte sent
            fields = {"device": 0, "step": 1, "row_offset": i, "rows": 1, "data": bytes(ROWS * row)}
        self.log.sent += 1
        yield agent_pb2.OpenBenchmarkResponse(**fields)


@pytest.mark.parametrize(
    ("what", "problem"),
    [
        ("duplicate-blocks", "rows 0..504 overlap rows already received"),
        ("overlapping-blocks", "rows 1..505 overlap rows already received"),
        ("not-asked", "not asked"),
        ("oversized-blocks", "block at row 0 has 1032192 bytes, not 1x512 values"),
    ],
)
def test_an_opening_that_breaks_the_rules_is_read_no_further(
    what: str, problem: str, adversary: Start
) -> None:
    agent = adversary(OpenBenchmark=flood_open, what=what)
    started = time.perf_counter()

    with agent_client.agent_channel(agent.endpoint) as channel:
        with pytest.raises(VerificationRefuted) as refused:
            agent_client.open_benchmark(
                channel,
                challenge_id="flood",
                openings=[(0, 1), (0, 2)],
                n=N,
                precision="fp32",
                timeout=60.0,
            )
        assert agent.log.ended.wait(10), "the verifier never ended the call"

    assert agent.log.openings == [[(0, 1), (0, 2)]]
    first_bad = 1 if what in ("duplicate-blocks", "overlapping-blocks") else 0
    assert agent.log.sent > first_bad  # the offending block really was sent...
    assert agent.log.sent < FLOOD // 10, agent.log.sent  # ... and the flood was cut short
    print(f"{what}: {agent.log.sent} of {FLOOD} blocks produced before the call ended")
    assert time.perf_counter() - started < 30  # not read until the deadline
    assert str(refused.value).startswith("bad data: device"), refused.value
    assert str(refused.value).endswith(problem), refused.value


@pytest.mark.django_db
def test_an_honest_opening_keeps_exactly_the_products_asked_for(start_agent: Any) -> None:
    """The bound the checks enforce, met by an honest agent: openings x n^2 x itemsize bytes."""
    endpoint = start_agent(agent_config())
    n, steps, name = 128, 3, "bf16"
    with agent_client.agent_channel(endpoint) as channel:
        answer = agent_client.run_benchmark(
            channel,
            n=n,
            dtype=name,
            steps=steps,
            devices={0: 11, 3: 12},
            pool_key="nvidia-a100-80g",
            challenge_id="honest",
            nonce=b"n" * 32,
            timeout=30.0,
        )
        assert not answer.problems and set(answer.reports) == {0, 3}
        openings = sorted(answer.digests)
        blocks = agent_client.open_benchmark(
            channel, challenge_id="honest", openings=openings, n=n, precision=name, timeout=30.0
        )

    kept = sum(len(data) for parts in blocks.values() for _, _, data in parts)
    assert kept == len(openings) * n * n * precision(name).accumulator.itemsize


def report_flood_then_honest(self: Any, request: Any, context: Any) -> Iterator[Any]:
    """The honest chain, after a report for every device of the pool but the sampled ones."""
    challenged = {d.device for d in request.devices}
    for device in range(32):
        if device not in challenged:
            self.log.sent += 1
            yield agent_pb2.RunBenchmarkResponse(
                report=agent_pb2.DeviceReport(device=device, attestation=ATTESTATION)
            )
    yield from HONEST_RUN(self, request, context)


def every_block_twice(self: Any, request: Any, context: Any) -> Iterator[Any]:
    """The honest opening with each block sent twice."""
    self.log.openings.append([(o.device, o.step) for o in request.openings])
    for message in HONEST_OPEN(self, request, context):
        yield message
        self.log.sent += 1  # the duplicate goes next (the verdict says it arrived)
        yield message


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"RunBenchmark": report_flood_then_honest}, "commitments: report for device "),
        ({"OpenBenchmark": every_block_twice}, "bad data: device "),
    ],
)
def test_a_flooding_agent_fails_the_run_on_the_check_named(
    attributes: dict[str, Any], reason: str, adversary: Start, pool_at: Any, acme: Any
) -> None:
    agent = adversary(**attributes)
    pool = force_status(pool_at(acme, agent.endpoint), Status.SUBMITTED)

    run = run_once(pool)

    assert agent.log.sent >= 1
    assert run.state == RunState.FAILED and run.attempts == 1
    assert run.verdict_reason.startswith(reason), run.verdict_reason
    if "OpenBenchmark" in attributes:
        assert run.verdict_reason.endswith("overlap rows already received"), run.verdict_reason
