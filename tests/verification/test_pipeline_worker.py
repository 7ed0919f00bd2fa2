"""A submitted pool is verified end to end by a real Celery worker against a real site agent.

Submission (registry service) -> ``pool_submitted`` on commit -> a queued run -> ``pool_verify``
on the worker -> gRPC to the simulated agent -> verdict and pool status. Each simulation mode
must end where the platform's rules say, with the reason in the run and in the pool's status.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from django.utils import timezone
from kombu import Connection

from agent.config import SimulationMode
from registry import services as registry_services
from registry.choices import Door, Status
from registry.models import LifecycleTransition, Pool
from tests.harness.figures import Figure
from tests.verification.conftest import agent_config, wait_finished, wait_for
from verification.choices import RunState, Trigger
from verification.models import VerificationRun
from verification.tasks import pool_verify

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def submit(pool: Pool, actor: Any) -> VerificationRun:
    """Submit through the registry's service, as every door does, and return the queued run."""
    registry_services.pool_submit(pool=pool, actor=actor, door=Door.API)
    return wait_for(lambda: VerificationRun.objects.filter(pool=pool).first(), what="a queued run")


def transitions_to(pool: Pool, status: str) -> int:
    return LifecycleTransition.objects.filter(
        object_type="registry.pool", object_id=pool.pk, to_status=status
    ).count()


def test_an_honest_center_becomes_active_with_its_evidence(
    celery_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    pool = pool_at(alice.membership.organization, start_agent(agent_config()))

    run = wait_finished(submit(pool, alice))

    pool.refresh_from_db()
    assert run.state == RunState.PASSED, run.verdict_reason
    assert run.trigger == Trigger.SUBMITTED
    assert pool.status == Status.ACTIVE
    assert pool.center.status == Status.ACTIVE  # a center is listed with its first verified pool
    assert pool.verified_at is not None
    # The slowest of the 8 emulated accelerators, scaled back to real time: near the declaration.
    assert 0.8 * 312 <= pool.measured_tflops_per_accelerator <= 1.05 * 312
    assert run.n == 128 and run.k == 8 and len(run.freivalds) == 8
    assert all(entry["passed"] for entry in run.freivalds)
    assert len(run.devices) == 8 and {d["node"] for d in run.devices} == set(run.sample["nodes"])
    # Every step of a chain of up to 16 is checked; above, a sample (default 3) that always
    # holds the last two, drawn after the commits.
    checked = run.sample["steps_checked"]
    assert len(checked) == (run.steps if run.steps <= 16 else 3)
    assert checked[-2:] == [run.steps - 1, run.steps]
    assert all(d["steps_opened"] == len(checked) and d["worst_ratio"] < 1 for d in run.devices)
    # Each device's attestation is stored with the run and bound to this run's nonce.
    assert all(d["attestation_format"] == "simulated-nonce-echo" for d in run.devices)
    assert all(d["attestation_has_nonce"] and d["attestation_b64"] for d in run.devices)
    assert min(d["tflops"] for d in run.devices) == run.measured_tflops_per_accelerator
    assert run.inventory_match["mismatches"] == []
    assert run.rtt_ms is not None and run.wall_seconds > 0
    assert transitions_to(pool, Status.VERIFYING) == 1
    assert transitions_to(pool, Status.ACTIVE) == 1


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (SimulationMode.CHEAT_WRONG, "arithmetic"),
        (SimulationMode.CHEAT_PARTIAL, "arithmetic"),
        (SimulationMode.CHEAT_TIMING, "opening"),
        (SimulationMode.SLOW, "throughput"),
    ],
)
def test_a_cheating_or_slow_center_fails_with_the_reason(
    mode: SimulationMode,
    reason: str,
    celery_worker: Any,
    start_agent: Any,
    pool_at: Any,
    alice: Any,
) -> None:
    pool = pool_at(alice.membership.organization, start_agent(agent_config(mode)))

    run = wait_finished(submit(pool, alice))

    pool.refresh_from_db()
    assert run.state == RunState.FAILED
    assert run.verdict_reason.startswith(reason), run.verdict_reason
    assert pool.status == Status.FAILED
    assert pool.status_reason == run.verdict_reason
    assert pool.measured_tflops_per_accelerator is None


def test_a_center_that_misdeclares_its_hardware_fails_on_inventory(
    celery_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    endpoint = start_agent(agent_config(nodes=2))  # the pool declares 4 nodes

    run = wait_finished(submit(pool_at(alice.membership.organization, endpoint), alice))

    assert run.state == RunState.FAILED
    assert run.verdict_reason == "inventory mismatch: nodes: declared 4, agent reports 2"


def test_a_flaky_center_is_retried_then_becomes_active(
    celery_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    # The first two GetInventory calls fail with UNAVAILABLE: before the challenge is sent.
    endpoint = start_agent(agent_config(SimulationMode.FLAKY, flaky_failures=2))
    pool = pool_at(alice.membership.organization, endpoint)

    run = wait_finished(submit(pool, alice))

    pool.refresh_from_db()
    assert run.state == RunState.PASSED, run.verdict_reason
    assert run.attempts == 3  # inventory fails twice, then all is well
    assert pool.status == Status.ACTIVE
    assert transitions_to(pool, Status.ACTIVE) == 1


def test_an_unreachable_center_ends_in_error_after_the_retries(
    celery_worker: Any, pool_at: Any, alice: Any, settings: Any
) -> None:
    pool = pool_at(alice.membership.organization, "127.0.0.1:9")  # nothing listens on port 9

    run = wait_finished(submit(pool, alice), timeout=90)

    pool.refresh_from_db()
    assert run.state == RunState.ERROR
    assert run.attempts == 5  # the first delivery and 4 retries
    assert run.verdict_reason.startswith("agent unreachable")
    assert pool.status == Status.FAILED
    assert pool.status_reason.startswith("agent unreachable")


def test_a_run_whose_worker_is_killed_after_the_challenge_fails_once_without_a_redraw(
    celery_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    """The worker child is SIGKILLed mid-benchmark, after the challenge was sent: the redelivery
    takes the run over and fails it (one verdict), never challenging again with a new draw.
    (Before the challenge was recorded, this run passed on its takeover with a second draw.)"""
    figure = Figure("C1.verification_child_kill", broker="redis", tasks=1, kills=0)
    try:
        # A slower accelerator makes the challenge last ~5 s, so the kill lands mid-benchmark.
        endpoint = start_agent(agent_config(declared_tflops=20.0))
        pool = pool_at(
            alice.membership.organization, endpoint, declared_tflops_per_accelerator=20.0
        )
        run = submit(pool, alice)
        claimed = wait_for(
            lambda: (
                VerificationRun.objects.filter(
                    pk=run.pk, state=RunState.RUNNING, challenge_sent_at__isnull=False
                )
                .exclude(claimed_by="")
                .first()
            ),
            what="the run's challenge sent by a worker child",
        )
        challenge_id = claimed.challenge_id
        child_pid = int(claimed.claimed_by.split(":")[1])
        # The child is a descendant of the worker this session started; kill only that pid.
        os.kill(child_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        figure["kills"] = 1

        run = wait_finished(run, timeout=90)

        pool.refresh_from_db()
        figure.update(
            executions=run.attempts,
            effects=transitions_to(pool, Status.FAILED),
            lost=int(run.state != RunState.FAILED),
            doubled=max(0, transitions_to(pool, Status.FAILED) - 1),
            recovery_s=time.monotonic() - killed_at,
        )
        # The kill landed mid-benchmark: the killed child never wrote a verdict.
        assert run.state == RunState.FAILED, run.verdict_reason
        assert run.verdict_reason.startswith(
            f"commitments: the challenge {challenge_id} sent at "
        ), run.verdict_reason
        assert run.attempts == 2  # the takeover happened
        assert str(child_pid) not in run.claimed_by  # another process finished it
        assert run.challenge_id == challenge_id  # and sent no second challenge
        assert pool.status == Status.FAILED
        assert transitions_to(pool, Status.FAILED) == 1
        assert transitions_to(pool, Status.ACTIVE) == 0
        assert VerificationRun.objects.filter(pool=pool).count() == 1
    finally:
        figure.emit(passed=figure.get("lost") == 0 and figure.get("doubled") == 0)


def test_the_time_limit_after_the_challenge_fails_the_run_once_on_the_worker(
    celery_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    """The worker's soft time limit fires while the agent streams its commitments (a 1 s limit
    on a ~5 s chain): the run fails naming the phase, on its first delivery, with one challenge;
    it is not left running for a takeover that would challenge again."""
    endpoint = start_agent(agent_config(declared_tflops=20.0))
    pool = pool_at(alice.membership.organization, endpoint, declared_tflops_per_accelerator=20.0)
    Pool.objects.filter(pk=pool.pk).update(status=Status.SUBMITTED)
    run = VerificationRun.objects.create(
        pool=pool, trigger=Trigger.OPERATOR_REQUEST, enqueued_at=timezone.now()
    )

    pool_verify.apply_async((str(run.run_id),), soft_time_limit=1, time_limit=20)

    run = wait_finished(run, timeout=60)
    assert run.state == RunState.FAILED, run.verdict_reason
    assert run.challenge_sent_at is not None and run.challenge_id
    # The time limit fired after the challenge was sent, on the one delivery.
    assert run.verdict_reason.startswith(
        f"commitments: the challenge {run.challenge_id} was not completed (the task's time "
        "limit ran out)"
    ), run.verdict_reason
    assert run.attempts == 1
    pool.refresh_from_db()
    assert pool.status == Status.FAILED


def test_a_reverify_of_an_active_pool_keeps_it_active(
    celery_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    from verification.services import verification_request

    pool = pool_at(alice.membership.organization, start_agent(agent_config()))
    wait_finished(submit(pool, alice))
    pool.refresh_from_db()
    first_verified = pool.verified_at

    again, created = verification_request(
        pool=pool, trigger=Trigger.SCHEDULED, actor=None, door=Door.WORKER
    )
    again = wait_finished(again)

    pool.refresh_from_db()
    assert created and again.state == RunState.PASSED
    assert pool.status == Status.ACTIVE
    assert pool.verified_at > first_verified
    assert transitions_to(pool, Status.ACTIVE) == 1  # no status move on a passed re-verify


def test_the_embedded_filesystem_transport_runs_verification(
    filesystem_worker: Any, start_agent: Any, pool_at: Any, alice: Any
) -> None:
    worker, transport_options = filesystem_worker
    pool = pool_at(alice.membership.organization, start_agent(agent_config()))
    pool = Pool.objects.get(pk=pool.pk)
    Pool.objects.filter(pk=pool.pk).update(status=Status.SUBMITTED)
    pool.refresh_from_db()
    run = VerificationRun.objects.create(pool=pool, trigger=Trigger.OPERATOR_REQUEST)

    # Publish as `make run`'s web process would: through the file-system transport's folder.
    with Connection("filesystem://", transport_options=transport_options) as conn:
        with conn.Producer() as producer:
            pool_verify.apply_async((str(run.run_id),), producer=producer)

    run = wait_finished(run)
    pool.refresh_from_db()
    assert run.state == RunState.PASSED, worker.output()[-2000:]
    assert pool.status == Status.ACTIVE
