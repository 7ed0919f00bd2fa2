"""The verification service called directly (no worker): claims, idempotency, verdict rules.

Agents are real gRPC servers on loopback; the service runs in the test's transaction, which is
enough here because nothing else reads the rows.
"""

from __future__ import annotations

import datetime as dt
import socket
import subprocess
import sys
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.utils import timezone

from agent.config import SimulationMode
from registry.choices import Door, Status
from tests.conftest import force_status
from tests.verification.conftest import agent_config
from verification import services
from verification.choices import RunState, Trigger
from verification.errors import AgentUnavailable
from verification.models import VerificationRun

pytestmark = pytest.mark.django_db


def queued_run(pool: Any, trigger: str = Trigger.SUBMITTED) -> VerificationRun:
    run, created = services.verification_request(
        pool=pool, trigger=trigger, actor=None, door=Door.WORKER
    )
    assert created
    return run


@pytest.fixture
def submitted_pool(pool_at: Any, start_agent: Any, acme: Any) -> Any:
    return force_status(pool_at(acme, start_agent(agent_config())), Status.SUBMITTED)


def test_a_finished_run_is_never_finished_again(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)

    first = services.verification_run(run_id=str(run.run_id))
    run.refresh_from_db()
    finished_at = run.finished_at
    second = services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert first.state == second.state == RunState.PASSED
    assert second.retry_in is None
    assert run.finished_at == finished_at
    assert run.attempts == 1


def test_a_pool_has_at_most_one_open_run(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)

    again, created = services.verification_request(
        pool=submitted_pool, trigger=Trigger.OPERATOR_REQUEST, actor=None, door=Door.API
    )

    assert not created and again.pk == run.pk


def test_a_draft_pool_cannot_be_verified(pool_at: Any, acme: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        services.verification_request(
            pool=pool_at(acme, "127.0.0.1:9"), trigger=Trigger.SUBMITTED, actor=None, door="api"
        )
    assert "status" in caught.value.message_dict


def test_a_run_held_by_a_live_worker_is_left_to_it(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)
    # This very process holds the claim: alive, on this host.
    VerificationRun.objects.filter(pk=run.pk).update(
        state=RunState.RUNNING, claimed_by=services._worker_identity(), claimed_at=timezone.now()
    )

    outcome = services.verification_run(run_id=str(run.run_id))

    assert outcome.state == RunState.RUNNING and outcome.retry_in is not None
    assert outcome.retry_in > 1


def test_a_run_held_by_a_dead_process_is_taken_over(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_claim = f"{services.socket.gethostname()}:{gone.stdout.strip()}:deadbeef"
    VerificationRun.objects.filter(pk=run.pk).update(
        state=RunState.RUNNING, claimed_by=dead_claim, claimed_at=timezone.now(), attempts=1
    )

    outcome = services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert outcome.state == RunState.PASSED
    assert run.attempts == 2


def test_a_run_whose_claim_expired_is_taken_over(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)
    VerificationRun.objects.filter(pk=run.pk).update(
        state=RunState.RUNNING,
        claimed_by="elsewhere:1:cafe",
        claimed_at=timezone.now() - dt.timedelta(hours=1),
    )

    assert services.verification_run(run_id=str(run.run_id)).state == RunState.PASSED


def test_a_transient_error_gives_the_run_back_to_the_queue(pool_at: Any, acme: Any) -> None:
    pool = force_status(pool_at(acme, "127.0.0.1:9"), Status.SUBMITTED)
    run = queued_run(pool)

    with pytest.raises(AgentUnavailable):
        services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    pool.refresh_from_db()
    assert run.state == RunState.QUEUED and run.claimed_by == ""
    assert pool.status == Status.VERIFYING


def test_the_final_attempt_ends_the_run_in_error(pool_at: Any, acme: Any) -> None:
    pool = force_status(pool_at(acme, "127.0.0.1:9"), Status.SUBMITTED)
    run = queued_run(pool)

    outcome = services.verification_run(run_id=str(run.run_id), final_attempt=True)

    pool.refresh_from_db()
    assert outcome.state == RunState.ERROR
    assert pool.status == Status.FAILED and pool.status_reason.startswith("agent unreachable")


def test_an_unreachable_active_pool_is_degraded_not_failed(pool_at: Any, acme: Any) -> None:
    pool = force_status(pool_at(acme, "127.0.0.1:9"), Status.ACTIVE)
    run = queued_run(pool, Trigger.SCHEDULED)

    services.verification_run(run_id=str(run.run_id), final_attempt=True)

    pool.refresh_from_db()
    assert pool.status == Status.DEGRADED


def test_the_worker_refuses_a_private_agent_endpoint_outside_development(
    submitted_pool: Any, settings: Any
) -> None:
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False  # production: the SSRF guard is on
    run = queued_run(submitted_pool)

    services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert run.state == RunState.FAILED
    assert run.verdict_reason.startswith("agent endpoint refused")


def test_a_poison_message_stops_after_the_delivery_budget(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)
    VerificationRun.objects.filter(pk=run.pk).update(attempts=50)

    outcome = services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert outcome.state == RunState.ERROR
    assert "deliveries" in run.verdict_reason


def test_an_active_pool_that_fails_reverification_becomes_failed(
    pool_at: Any, start_agent: Any, acme: Any
) -> None:
    endpoint = start_agent(agent_config(SimulationMode.CHEAT_WRONG))
    pool = force_status(pool_at(acme, endpoint), Status.ACTIVE)
    run = queued_run(pool, Trigger.SCHEDULED)

    services.verification_run(run_id=str(run.run_id))

    pool.refresh_from_db()
    assert pool.status == Status.FAILED
    assert pool.status_reason.startswith("arithmetic")


def test_a_pool_withdrawn_during_the_run_keeps_its_status(submitted_pool: Any, acme: Any) -> None:
    run = queued_run(submitted_pool)
    force_status(submitted_pool, Status.RETIRED)

    outcome = services.verification_run(run_id=str(run.run_id))

    submitted_pool.refresh_from_db()
    assert outcome.state == RunState.PASSED  # the evidence stands on the run
    assert submitted_pool.status == Status.RETIRED
    assert submitted_pool.measured_tflops_per_accelerator is None


def test_each_finished_run_is_due_again_at_a_jittered_time(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)
    services.verification_run(run_id=str(run.run_id))
    run.refresh_from_db()

    delay = run.next_due_at - run.finished_at
    assert dt.timedelta(hours=12) <= delay <= dt.timedelta(hours=36)


def test_the_sweep_requeues_pools_that_are_due(submitted_pool: Any) -> None:
    run = queued_run(submitted_pool)
    services.verification_run(run_id=str(run.run_id))
    run.refresh_from_db()

    assert services.reverify_sweep(now=run.next_due_at - dt.timedelta(seconds=1)) == []
    queued = services.reverify_sweep(now=run.next_due_at + dt.timedelta(seconds=1))
    assert [r.pool_id for r in queued] == [submitted_pool.pk]
    assert queued[0].trigger == Trigger.SCHEDULED
    # A second sweep in the same slot finds the open run and queues nothing.
    assert services.reverify_sweep(now=run.next_due_at + dt.timedelta(seconds=2)) == []


def test_a_run_whose_message_was_lost_is_sent_again_once(
    submitted_pool: Any, django_capture_on_commit_callbacks: Any
) -> None:
    run = queued_run(submitted_pool)
    later = run.enqueued_at + dt.timedelta(minutes=11)

    assert services.verification_requeue_stale(now=run.enqueued_at) == 0
    with django_capture_on_commit_callbacks() as sent:
        assert services.verification_requeue_stale(now=later) == 1
        assert services.verification_requeue_stale(now=later) == 0

    run.refresh_from_db()
    assert run.enqueued_at == later and len(sent) == 1


def test_the_worker_refuses_an_agent_name_whose_answer_turned_private(
    pool_at: Any, acme: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Registered while public; the DNS answer now points inside the platform's network.
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False
    pool = force_status(pool_at(acme, "agent.example.org:50051"), Status.SUBMITTED)
    answers = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 50051))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    run = queued_run(pool)

    assert services.verification_run(run_id=str(run.run_id)).state == RunState.FAILED
    run.refresh_from_db()
    assert run.verdict_reason.startswith("agent endpoint refused"), run.verdict_reason


def test_an_agent_name_that_does_not_resolve_is_retried(
    pool_at: Any, acme: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False
    pool = force_status(pool_at(acme, "agent.example.org:50051"), Status.SUBMITTED)

    def no_answer(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_answer)
    run = queued_run(pool)

    with pytest.raises(AgentUnavailable):
        services.verification_run(run_id=str(run.run_id))
    run.refresh_from_db()
    assert run.state == RunState.QUEUED  # released for the retry


def test_a_sample_of_steps_is_opened_when_the_setting_says_so(
    submitted_pool: Any, settings: Any
) -> None:
    settings.VERIFICATION_OPEN_STEPS = 2
    settings.VERIFICATION_OPEN_ALL_UP_TO = 0
    run = queued_run(submitted_pool)

    assert services.verification_run(run_id=str(run.run_id)).state == RunState.PASSED
    run.refresh_from_db()
    assert run.steps > 2
    assert {d["steps_opened"] for d in run.devices} == {2}


def test_the_checked_sample_always_holds_the_last_two_steps(settings: Any) -> None:
    settings.VERIFICATION_OPEN_STEPS = 4
    settings.VERIFICATION_OPEN_ALL_UP_TO = 0
    drawn = set()
    for _ in range(40):
        chosen = services._choose_steps(10)
        assert len(chosen) == 4 and chosen[-2:] == [9, 10] and len(set(chosen)) == 4
        drawn.update(chosen[:-2])
    assert len(drawn) > 4  # the others are drawn, not fixed
    settings.VERIFICATION_OPEN_STEPS = 1
    assert services._choose_steps(10) == [10]
    settings.VERIFICATION_OPEN_STEPS = 0
    assert services._choose_steps(5) == [1, 2, 3, 4, 5]


def test_a_short_chain_is_checked_whole(settings: Any) -> None:
    """With few steps one drawn step leaves a prover who fakes half of them a coin toss (review
    2: 6 of 8 runs passed at 1.5x the hardware's speed): up to VERIFICATION_OPEN_ALL_UP_TO
    steps, every step is checked; above it, the sample."""
    settings.VERIFICATION_OPEN_STEPS = 3
    settings.VERIFICATION_OPEN_ALL_UP_TO = 16
    assert services._choose_steps(8) == list(range(1, 9))
    assert services._choose_steps(16) == list(range(1, 17))
    assert len(services._choose_steps(17)) == 3
    settings.VERIFICATION_OPEN_ALL_UP_TO = 4
    assert len(services._choose_steps(8)) == 3


# --- No second draw: a delivery that stops after the challenge is sent ------------------------


def age_claim(run: VerificationRun) -> None:
    """Make the run's claim and last send older than the task's hard limit and the requeue delay:
    what ``verification_requeue_stale`` finds after its worker died."""
    run.refresh_from_db()
    assert run.claimed_at is not None and run.enqueued_at is not None
    later = dt.timedelta(hours=1)
    VerificationRun.objects.filter(pk=run.pk).update(
        claimed_at=run.claimed_at - later, enqueued_at=run.enqueued_at - later
    )


def count_challenges(monkeypatch: Any) -> list[str]:
    """Challenge ids of every RunBenchmark the verifier sends (the real call still runs)."""
    from verification import agent_client

    sent: list[str] = []
    real = agent_client.run_benchmark

    def counted(channel: Any, **kw: Any) -> Any:
        sent.append(kw["challenge_id"])
        return real(channel, **kw)

    monkeypatch.setattr(agent_client, "run_benchmark", counted)
    return sent


def test_the_time_limit_after_the_challenge_fails_the_run_without_a_redraw(
    submitted_pool: Any, monkeypatch: Any
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from verification import agent_client

    sent = count_challenges(monkeypatch)
    opened: list[str] = []

    def stalled(channel: Any, **kw: Any) -> Any:
        # The agent holds the opening until the task's soft limit fires in the worker.
        opened.append(kw["challenge_id"])
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(agent_client, "open_benchmark", stalled)
    run = queued_run(submitted_pool)

    outcome = services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert opened == sent and len(sent) == 1  # the time limit fired after the challenge was sent
    assert outcome.state == run.state == RunState.FAILED
    assert run.verdict_reason.startswith(f"opening: the challenge {sent[0]} was not completed")
    assert "time limit" in run.verdict_reason
    assert run.challenge_id == sent[0] and run.challenge_sent_at is not None
    # A redelivery (or the sweep's) leaves the verdict alone and challenges nothing.
    age_claim(run)
    assert services.verification_requeue_stale() == 0
    assert services.verification_run(run_id=str(run.run_id)).state == RunState.FAILED
    assert len(sent) == 1


def test_a_takeover_of_a_run_whose_challenge_was_sent_fails_it_without_a_redraw(
    submitted_pool: Any, monkeypatch: Any
) -> None:
    from verification import agent_client

    sent: list[str] = []

    def killed(channel: Any, **kw: Any) -> Any:
        # The worker dies mid-stream (hard time limit, SIGKILL, OOM): nothing below it runs.
        sent.append(kw["challenge_id"])
        raise SystemExit("killed")

    monkeypatch.setattr(agent_client, "run_benchmark", killed)
    run = queued_run(submitted_pool)
    with pytest.raises(SystemExit):
        services.verification_run(run_id=str(run.run_id))
    run.refresh_from_db()
    assert run.state == RunState.RUNNING and run.attempts == 1
    assert run.challenge_id == sent[0] and run.challenge_sent_at is not None

    monkeypatch.undo()
    again = count_challenges(monkeypatch)
    age_claim(run)
    assert services.verification_requeue_stale() == 1  # the lost message is sent again
    outcome = services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert run.attempts == 2  # the takeover happened
    assert outcome.state == run.state == RunState.FAILED
    assert run.verdict_reason.startswith(f"commitments: the challenge {sent[0]} sent at ")
    assert "was not completed" in run.verdict_reason
    assert again == []  # no second challenge, no new draw
    submitted_pool.refresh_from_db()
    assert submitted_pool.status == Status.FAILED


def test_the_time_limit_before_the_challenge_leaves_the_run_to_a_takeover(
    submitted_pool: Any, monkeypatch: Any
) -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    from verification import agent_client

    real = agent_client.get_inventory
    calls: list[int] = []

    def slow_once(channel: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise SoftTimeLimitExceeded()
        return real(channel, **kw)

    monkeypatch.setattr(agent_client, "get_inventory", slow_once)
    sent = count_challenges(monkeypatch)
    run = queued_run(submitted_pool)
    with pytest.raises(SoftTimeLimitExceeded):
        services.verification_run(run_id=str(run.run_id))
    run.refresh_from_db()
    assert run.state == RunState.RUNNING and run.challenge_sent_at is None and sent == []

    age_claim(run)
    assert services.verification_run(run_id=str(run.run_id)).state == RunState.PASSED
    run.refresh_from_db()
    assert run.attempts == 2 and len(sent) == 1 and run.challenge_id == sent[0]


def test_the_waits_before_the_challenge_share_one_deadline(
    submitted_pool: Any, monkeypatch: Any, settings: Any
) -> None:
    import time

    from verification import agent_client

    settings.VERIFICATION_PRECHALLENGE_SECONDS = 0.5
    real = agent_client.get_inventory
    given: list[float] = []

    def slow(channel: Any, *, timeout: float) -> Any:
        # The agent answers the inventory just inside its own timeout, past the shared deadline.
        given.append(timeout)
        time.sleep(0.6)
        return real(channel, timeout=timeout)

    monkeypatch.setattr(agent_client, "get_inventory", slow)
    sent = count_challenges(monkeypatch)
    run = queued_run(submitted_pool)

    with pytest.raises(AgentUnavailable, match="before the challenge"):
        services.verification_run(run_id=str(run.run_id))

    run.refresh_from_db()
    assert given and given[0] <= 0.5  # the inventory got what was left, not the RPC timeout
    assert sent == [] and run.challenge_sent_at is None
    assert run.state == RunState.QUEUED  # released for a retry with a fresh plan
