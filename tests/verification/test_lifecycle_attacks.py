"""A center working the lifecycle rather than the arithmetic: learning or moving the time of the
next unannounced re-verification, letting a heartbeat gap wash a degradation away, refusing
re-verification for good, and resubmitting a failed pool until a probabilistic check misses.
And the honest side: a pass lifts what an unanswered re-verification set.

Every test first proves the fault landed (the pool really was degraded, the run really failed),
then attacks the defence through the doors a center has (REST, portal, the services the agent's
heartbeats and the worker reach).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import pytest
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from agent.config import SimulationMode
from registry import selectors as registry_selectors
from registry import services as registry_services
from registry.choices import ABANDONED_REASON, Door, Status
from registry.clock import db_now
from registry.errors import ResubmitTooSoon
from registry.models import Center, LifecycleTransition, Pool
from tests.conftest import force_status
from tests.factories import PoolFactory
from tests.verification.conftest import agent_config
from tests.verification.test_tracking import _report
from verification import services
from verification.choices import RunState, Trigger
from verification.errors import AgentUnavailable
from verification.models import VerificationRun

pytestmark = pytest.mark.django_db

DEAD_ENDPOINT = "127.0.0.1:9"  # nothing listens: every call is UNAVAILABLE


@pytest.fixture(autouse=True)
def lifecycle_only(settings: Any) -> None:
    """These tests are about the lifecycle, not the measurement: an honest agent on a loaded
    2-core machine must neither miss the throughput tolerance nor drift between two runs."""
    settings.VERIFICATION_TOLERANCE = 0.05
    settings.VERIFICATION_DRIFT_THRESHOLD = 0.95


def run_like_the_task(pool: Pool, trigger: str) -> VerificationRun:
    """Request a run and deliver it as the task does (retries, the last one final), without the
    task's back-off sleeps."""
    from django.conf import settings

    run, created = services.verification_request(
        pool=pool, trigger=trigger, actor=None, door=Door.WORKER
    )
    assert created
    for attempt in range(settings.VERIFICATION_MAX_RETRIES + 1):
        try:
            services.verification_run(
                run_id=str(run.run_id), final_attempt=attempt == settings.VERIFICATION_MAX_RETRIES
            )
            break
        except AgentUnavailable:
            continue
    run.refresh_from_db()
    pool.refresh_from_db()
    return run


def move_agent(pool: Pool, endpoint: str) -> None:
    Center.objects.filter(pk=pool.center_id).update(agent_endpoint=endpoint)
    pool.refresh_from_db()


@pytest.fixture
def verified(pool_at: Any, start_agent: Any, acme: Any) -> tuple[Pool, str]:
    """An honest pool verified through the real pipeline (active, its transitions logged), and
    its agent's endpoint."""
    endpoint = start_agent(agent_config())
    pool = force_status(pool_at(acme, endpoint), Status.SUBMITTED)
    run = run_like_the_task(pool, Trigger.SUBMITTED)
    assert (run.state, pool.status) == (RunState.PASSED, Status.ACTIVE), run.verdict_reason
    return pool, endpoint


def beat(actor: Any, pool: Pool, healthy: int | None = None) -> None:
    """A heartbeat through the service the telemetry server and the API call."""
    _report(actor, pool, pool.accelerators if healthy is None else healthy)


def go_silent_and_come_back(actor: Any, pool: Pool, healthy: int | None = None) -> None:
    """Stop heartbeats past HEARTBEAT_OFFLINE_AFTER (the pool must go offline), then beat."""
    services.heartbeat_sweep(now=db_now() + dt.timedelta(seconds=200))
    pool.refresh_from_db()
    assert pool.status == Status.OFFLINE and pool.status_reason.startswith(
        services.HEARTBEAT_REASON
    )
    beat(actor, pool, healthy)
    services.heartbeat_sweep()
    pool.refresh_from_db()


# --- The re-verification schedule ------------------------------------------------------------


def test_the_operator_never_sees_when_the_next_scheduled_run_is_due(
    verified: tuple[Pool, str], alice: Any, pat: Any, client: Any
) -> None:
    pool, _ = verified
    run = VerificationRun.objects.get(pool=pool)
    assert run.next_due_at is not None  # the schedule exists: staff see it, operators do not

    operator, staff = APIClient(), APIClient()
    operator.force_authenticate(alice)
    staff.force_authenticate(pat)
    listed = operator.get(f"/api/v1/verification-runs/?pool={pool.national_id}").json()
    detail = operator.get(f"/api/v1/verification-runs/{run.run_id}/").json()
    asked = operator.post(f"/api/v1/pools/{pool.national_id}/reverify/")
    assert asked.status_code == 202
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert [r["next_due_at"] for r in rows] == [None]
    assert detail["next_due_at"] is None and asked.json()["next_due_at"] is None
    staff_detail = staff.get(f"/api/v1/verification-runs/{run.run_id}/").json()
    assert staff_detail["next_due_at"] == run.next_due_at.isoformat().replace("+00:00", "Z")

    page = reverse("run-detail", args=[run.run_id])
    client.force_login(alice)
    shown = client.get(page).content.decode()
    assert 'id="next-due"' not in shown and f"{run.next_due_at:%Y-%m-%d %H:%M}" not in shown
    client.force_login(pat)
    assert f"{run.next_due_at:%Y-%m-%d %H:%M}" in client.get(page).content.decode()


def test_an_operator_run_does_not_move_the_scheduled_one(
    verified: tuple[Pool, str], alice: Any
) -> None:
    pool, _ = verified
    scheduled = VerificationRun.objects.get(pool=pool)
    due = scheduled.next_due_at
    assert due is not None

    # The center asks for its own run, hoping to restart the 12-36 h clock from now.
    operator = APIClient()
    operator.force_authenticate(alice)
    asked = operator.post(f"/api/v1/pools/{pool.national_id}/reverify/")
    own = VerificationRun.objects.get(run_id=asked.json()["run_id"])
    services.verification_run(run_id=str(own.run_id), final_attempt=True)
    own.refresh_from_db()
    assert own.state == RunState.PASSED and own.trigger == Trigger.OPERATOR_REQUEST
    assert own.finished_at is not None and own.finished_at > scheduled.finished_at
    assert own.next_due_at is None  # it sets no schedule

    # The platform's run comes when the platform's draw said, not later.
    assert services.reverify_sweep(now=due - dt.timedelta(seconds=1)) == []
    queued = services.reverify_sweep(now=due + dt.timedelta(seconds=1))
    assert [(r.pool_id, r.trigger) for r in queued] == [(pool.pk, Trigger.SCHEDULED)]


# --- Heartbeat gaps do not launder a degradation ----------------------------------------------


DRIFT = "drift: measured 100.0 TFLOPS per accelerator, 40% below its record of 166.0"


@pytest.mark.parametrize("cause", ["unreachable", "drift", "health"])
def test_a_heartbeat_gap_brings_a_degraded_pool_back_degraded(
    cause: str, verified: tuple[Pool, str], alice: Any
) -> None:
    pool, endpoint = verified
    healthy = None
    if cause == "unreachable":  # the agent refuses a scheduled re-verification
        move_agent(pool, DEAD_ENDPOINT)
        assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
        move_agent(pool, endpoint)
    elif cause == "drift":  # what the verifier writes for a pass far below the record
        registry_services.lifecycle_transition(
            obj=pool, to=Status.DEGRADED, reason=DRIFT, actor=None, door=Door.WORKER
        )
    else:  # a node drained: the agent's own heartbeat says so
        healthy = pool.accelerators - 8
        beat(alice, pool, healthy)
    pool.refresh_from_db()
    assert pool.status == Status.DEGRADED
    before = pool.status_reason
    assert not before.startswith(services.HEARTBEAT_REASON)

    go_silent_and_come_back(alice, pool, healthy)

    assert pool.status == Status.DEGRADED and pool.status_reason == before
    # The restored reason is the original one, so what lifts it still can: all healthy again.
    if cause == "health":
        beat(alice, pool)
        assert pool.status == Status.ACTIVE


def test_a_pool_active_before_the_gap_comes_back_active_unless_its_beats_say_otherwise(
    verified: tuple[Pool, str], alice: Any
) -> None:
    pool, _ = verified
    go_silent_and_come_back(alice, pool)
    assert pool.status == Status.ACTIVE and pool.status_reason == "heartbeats resumed"

    # Silent again, and the beats that resume report a node down: degraded at once.
    go_silent_and_come_back(alice, pool, healthy=pool.accelerators - 8)
    assert pool.status == Status.DEGRADED
    assert pool.status_reason.startswith(services.HEALTH_REASON)


def test_two_gaps_in_a_row_still_bring_back_the_degradation(
    verified: tuple[Pool, str], alice: Any
) -> None:
    pool, _ = verified
    registry_services.lifecycle_transition(
        obj=pool, to=Status.DEGRADED, reason=DRIFT, actor=None, door=Door.WORKER
    )
    go_silent_and_come_back(alice, pool)
    assert (pool.status, pool.status_reason) == (Status.DEGRADED, DRIFT)
    go_silent_and_come_back(alice, pool)
    assert (pool.status, pool.status_reason) == (Status.DEGRADED, DRIFT)


# --- Refusing re-verification, and an honest outage ----------------------------------------------


@pytest.mark.parametrize("limit", [2, 3])
def test_an_agent_that_keeps_refusing_reverification_fails_its_pool(
    limit: int, verified: tuple[Pool, str], settings: Any
) -> None:
    settings.VERIFICATION_MAX_CONSECUTIVE_ERRORS = limit
    pool, _ = verified
    move_agent(pool, DEAD_ENDPOINT)
    for _ in range(limit - 1):
        assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
        assert pool.status == Status.DEGRADED  # listed, not yet failed

    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR

    assert pool.status == Status.FAILED
    assert pool.status_reason.startswith(f"agent unreachable for {limit} verifications in a row")


def test_a_pass_between_refusals_restarts_the_count(
    verified: tuple[Pool, str], settings: Any
) -> None:
    settings.VERIFICATION_MAX_CONSECUTIVE_ERRORS = 2
    pool, endpoint = verified
    move_agent(pool, DEAD_ENDPOINT)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
    move_agent(pool, endpoint)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.PASSED
    move_agent(pool, DEAD_ENDPOINT)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
    assert pool.status == Status.DEGRADED


def test_a_pass_lifts_the_degradation_of_an_unanswered_reverification(
    verified: tuple[Pool, str],
) -> None:
    pool, endpoint = verified
    move_agent(pool, DEAD_ENDPOINT)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
    assert pool.status == Status.DEGRADED
    assert pool.status_reason.startswith(services.UNREACHABLE_REASON)

    move_agent(pool, endpoint)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.PASSED

    assert pool.status == Status.ACTIVE
    assert pool.status_reason.startswith("agent answered again: verified")


def test_a_pass_leaves_a_degradation_for_unhealthy_accelerators(
    verified: tuple[Pool, str], alice: Any
) -> None:
    pool, _ = verified
    beat(alice, pool, pool.accelerators - 8)
    assert pool.status == Status.DEGRADED

    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.PASSED

    assert pool.status == Status.DEGRADED
    assert pool.status_reason.startswith(services.HEALTH_REASON)


# --- Resubmitting a failed pool ------------------------------------------------------------


@pytest.fixture
def failed(pool_at: Any, start_agent: Any, acme: Any) -> Pool:
    """A pool whose verification the cheat lost: failed through the real pipeline."""
    pool = force_status(
        pool_at(acme, start_agent(agent_config(SimulationMode.CHEAT_WRONG))), Status.SUBMITTED
    )
    run = run_like_the_task(pool, Trigger.SUBMITTED)
    assert run.state == RunState.FAILED and pool.status == Status.FAILED
    return pool


def snapshot(pool: Pool) -> tuple[Any, ...]:
    pool.refresh_from_db()
    return (
        pool.status,
        pool.version,
        Center.objects.get(pk=pool.center_id).status,
        LifecycleTransition.objects.count(),
        VerificationRun.objects.filter(pool=pool).count(),
    )


def test_a_failed_pool_is_refused_at_every_door_until_its_cooldown_ends(
    failed: Pool, alice: Any, client: Any, settings: Any
) -> None:
    settings.VERIFICATION_RESUBMIT_COOLDOWN = 600
    pool = failed
    cooldown = registry_selectors.resubmit_cooldown(pool, timezone.now())
    assert cooldown is not None and cooldown.seconds == 600
    expected = cooldown.message()
    assert f"{cooldown.allowed_at:%Y-%m-%d %H:%M:%S} UTC" in expected
    before = snapshot(pool)

    api = APIClient()
    api.force_authenticate(alice)
    answer = api.post(f"/api/v1/pools/{pool.national_id}/submit/")
    assert snapshot(pool) == before  # nothing half-written
    # Back through draft: the same wait.
    withdrawn = api.post(
        f"/api/v1/pools/{pool.national_id}/transition/", {"to": "draft", "reason": "fix"}
    )
    assert withdrawn.status_code == 200
    again = api.post(f"/api/v1/pools/{pool.national_id}/submit/")
    assert answer.status_code == again.status_code == 400
    assert answer.json() == again.json() == {"status": [expected]}

    client.force_login(alice)
    page = client.post(reverse("pool-submit", args=[pool.national_id]), follow=True)
    assert expected in page.content.decode()  # the refusal, as the portal's message
    with pytest.raises(ResubmitTooSoon) as refused:
        registry_services.pool_submit(pool=pool, actor=alice, door=Door.CLI)
    assert refused.value.messages == [expected]
    assert refused.value.allowed_at == cooldown.allowed_at
    # The pool page says when, before anyone tries.
    assert expected in client.get(reverse("pool-detail", args=[pool.national_id])).content.decode()

    pool.refresh_from_db()
    assert pool.status == Status.DRAFT
    assert snapshot(pool)[2:] == (before[2], before[3] + 1, before[4])  # only the withdrawal

    # Once the cool-down is over, it may go (the transition log is append-only: the clock moves).
    later = cooldown.allowed_at + dt.timedelta(seconds=1)
    with mock.patch.object(timezone, "now", return_value=later):
        assert api.post(f"/api/v1/pools/{pool.national_id}/submit/").status_code == 200
    pool.refresh_from_db()
    assert pool.status == Status.SUBMITTED


def test_the_cooldown_doubles_with_each_failure_in_the_window(
    make_pool: Any, acme: Any, settings: Any
) -> None:
    settings.VERIFICATION_RESUBMIT_COOLDOWN = 60
    settings.VERIFICATION_RESUBMIT_COOLDOWN_MAX = 200
    settings.VERIFICATION_RESUBMIT_WINDOW_DAYS = 2
    pool = make_pool(acme, Status.VERIFYING)
    seconds = []
    for _ in range(4):
        force_status(pool, Status.VERIFYING)
        registry_services.lifecycle_transition(
            obj=pool, to=Status.FAILED, reason="arithmetic", actor=None, door=Door.WORKER
        )
        cooldown = registry_selectors.resubmit_cooldown(pool, timezone.now())
        assert cooldown is not None
        seconds.append(cooldown.seconds)
    assert seconds == [60, 120, 200, 200]  # doubled, then held at the maximum

    # Failures older than the window are forgiven.
    later = timezone.now() + dt.timedelta(days=2, seconds=1)
    assert registry_selectors.resubmit_cooldown(pool, later) is None
    settings.VERIFICATION_RESUBMIT_WINDOW_DAYS = 3
    assert registry_selectors.resubmit_cooldown(pool, later) is None  # 200 s passed long ago
    settings.VERIFICATION_RESUBMIT_COOLDOWN = 86400
    settings.VERIFICATION_RESUBMIT_COOLDOWN_MAX = 10 * 86400
    cooldown = registry_selectors.resubmit_cooldown(pool, later)
    assert cooldown is not None and cooldown.seconds == 8 * 86400  # 1 d doubled three times
    assert "a cool-down of 8 d" in cooldown.message()


def test_platform_staff_may_lift_the_cooldown(failed: Pool, pat: Any) -> None:
    assert registry_selectors.resubmit_cooldown(failed, timezone.now()) is not None
    registry_services.pool_submit(pool=failed, actor=pat, door=Door.API)
    failed.refresh_from_db()
    assert failed.status == Status.SUBMITTED


def test_a_submitted_pool_cannot_be_deleted_with_its_evidence(failed: Pool, alice: Any) -> None:
    api = APIClient()
    api.force_authenticate(alice)
    assert (
        api.post(
            f"/api/v1/pools/{failed.national_id}/transition/", {"to": "draft", "reason": "x"}
        ).status_code
        == 200
    )
    answer = api.delete(f"/api/v1/pools/{failed.national_id}/")
    assert answer.status_code == 400 and "keeps its history" in answer.json()["status"][0]
    assert VerificationRun.objects.filter(pool=failed, state=RunState.FAILED).count() == 1


# --- Going offline when the verifier knocks ---------------------------------------------------


def run_while_silent(pool: Pool, actor: Any, *, after: int = 200) -> tuple[VerificationRun, str]:
    """A scheduled run whose agent stops heartbeating when the verifier knocks (silent ``after``
    seconds at the verdict), then beats again; returns the run and the pool's status at the
    verdict."""
    run, created = services.verification_request(
        pool=pool, trigger=Trigger.SCHEDULED, actor=None, door=Door.WORKER
    )
    assert created
    services.heartbeat_sweep(now=db_now() + dt.timedelta(seconds=after))
    services.verification_run(run_id=str(run.run_id), final_attempt=True)
    run.refresh_from_db()
    pool.refresh_from_db()
    at_verdict = pool.status
    beat(actor, pool)
    services.heartbeat_sweep()
    pool.refresh_from_db()
    return run, at_verdict


def test_a_refuted_reverification_fails_a_pool_that_went_offline(
    verified: tuple[Pool, str], start_agent: Any, alice: Any
) -> None:
    pool, _ = verified
    move_agent(pool, start_agent(agent_config(SimulationMode.CHEAT_WRONG)))

    run, at_verdict = run_while_silent(pool, alice)

    assert at_verdict == Status.FAILED and run.state == RunState.FAILED  # not shielded
    assert pool.status == Status.FAILED  # and heartbeats resuming do not bring it back
    move = LifecycleTransition.objects.get(object_id=pool.pk, to_status=Status.FAILED)
    assert (move.from_status, move.door) == (Status.OFFLINE, Door.WORKER)  # the fault landed
    assert registry_selectors.resubmit_cooldown(pool, timezone.now()) is not None


@pytest.mark.parametrize("silent", [200, 60])  # offline; degraded by the sweeper only
def test_an_unanswered_run_on_a_silent_pool_brings_it_back_degraded(
    silent: int, verified: tuple[Pool, str], alice: Any
) -> None:
    pool, endpoint = verified
    move_agent(pool, DEAD_ENDPOINT)

    run, at_verdict = run_while_silent(pool, alice, after=silent)

    assert run.state == RunState.ERROR and at_verdict == Status.OFFLINE
    assert LifecycleTransition.objects.filter(  # the pool really was silent at the verdict
        object_id=pool.pk, reason__startswith=services.HEARTBEAT_REASON
    ).exists()
    assert pool.status == Status.DEGRADED
    assert pool.status_reason.startswith(services.UNREACHABLE_REASON)
    # The platform's next run that is answered lifts it, as for a listed pool.
    move_agent(pool, endpoint)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.PASSED
    assert pool.status == Status.ACTIVE


@pytest.mark.parametrize("limit", [2, 3])
def test_going_silent_at_every_run_still_reaches_the_error_limit(
    limit: int, verified: tuple[Pool, str], alice: Any, settings: Any
) -> None:
    settings.VERIFICATION_MAX_CONSECUTIVE_ERRORS = limit
    pool, _ = verified
    move_agent(pool, DEAD_ENDPOINT)
    for _ in range(limit - 1):
        run, at_verdict = run_while_silent(pool, alice)
        assert (run.state, at_verdict, pool.status) == (
            RunState.ERROR,
            Status.OFFLINE,
            Status.DEGRADED,
        )

    run, at_verdict = run_while_silent(pool, alice)

    assert (run.state, at_verdict, pool.status) == (RunState.ERROR, Status.FAILED, Status.FAILED)
    assert pool.status_reason.startswith(f"agent unreachable for {limit} verifications in a row")


# --- Operator-requested runs ------------------------------------------------------------------


def test_an_operator_run_neither_lifts_the_unanswered_degradation_nor_restarts_the_count(
    verified: tuple[Pool, str], alice: Any, settings: Any
) -> None:
    settings.VERIFICATION_MAX_CONSECUTIVE_ERRORS = 2
    pool, endpoint = verified
    move_agent(pool, DEAD_ENDPOINT)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
    assert pool.status == Status.DEGRADED  # the fault landed
    degraded_for = pool.status_reason
    assert degraded_for.startswith(services.UNREACHABLE_REASON)

    # The center brings the hardware back for an hour and asks for its own run (REST).
    move_agent(pool, endpoint)
    operator = APIClient()
    operator.force_authenticate(alice)
    asked = operator.post(f"/api/v1/pools/{pool.national_id}/reverify/")
    assert asked.status_code == 202
    own = VerificationRun.objects.get(run_id=asked.json()["run_id"])
    services.verification_run(run_id=str(own.run_id), final_attempt=True)
    own.refresh_from_db()
    pool.refresh_from_db()
    assert (own.state, own.trigger) == (RunState.PASSED, Trigger.OPERATOR_REQUEST)  # recorded
    assert (pool.status, pool.status_reason) == (Status.DEGRADED, degraded_for)  # lifts nothing

    # Gone again for the platform's unannounced run: the streak went on through the pass.
    move_agent(pool, DEAD_ENDPOINT)
    assert run_like_the_task(pool, Trigger.SCHEDULED).state == RunState.ERROR
    assert pool.status == Status.FAILED
    assert pool.status_reason.startswith("agent unreachable for 2 verifications in a row")


# --- The cool-down is the center's ------------------------------------------------------------


def twin_of(pool: Pool, actor: Any) -> Pool:
    """The same hardware, declared again as a new pool of the same center."""
    data = {f: getattr(pool, f) for f in registry_services.POOL_FIELDS if f != "name"}
    return registry_services.pool_create(
        actor=actor, door=Door.API, center=pool.center, data={**data, "name": "same racks"}
    )


def test_the_same_hardware_as_a_new_pool_waits_the_centers_cooldown(
    failed: Pool, alice: Any, client: Any
) -> None:
    cooldown = registry_selectors.resubmit_cooldown(failed, timezone.now())
    assert cooldown is not None  # the fault landed: the failed pool itself waits
    expected = cooldown.message()
    # The operator retires the failed pool out of sight and declares the hardware again.
    api = APIClient()
    api.force_authenticate(alice)
    retired = api.post(
        f"/api/v1/pools/{failed.national_id}/transition/", {"to": "retired", "reason": "gone"}
    )
    assert retired.status_code == 200
    twin = twin_of(failed, alice)
    assert registry_selectors.resubmit_cooldown(twin, timezone.now()) == cooldown
    before = snapshot(twin)

    answer = api.post(f"/api/v1/pools/{twin.national_id}/submit/")
    assert answer.status_code == 400 and answer.json() == {"status": [expected]}
    client.force_login(alice)
    page = client.post(reverse("pool-submit", args=[twin.national_id]), follow=True)
    assert expected in page.content.decode()
    with pytest.raises(ResubmitTooSoon) as refused:
        registry_services.pool_submit(pool=twin, actor=alice, door=Door.CLI)
    assert refused.value.messages == [expected]
    assert snapshot(twin) == before  # nothing half-written


def test_the_failures_of_a_centers_pools_add_up_and_stay_at_that_center(
    make_pool: Any, acme: Any, settings: Any
) -> None:
    settings.VERIFICATION_RESUBMIT_COOLDOWN = 60
    first = make_pool(acme, Status.VERIFYING)
    second = PoolFactory(center=first.center)
    force_status(second, Status.VERIFYING)
    for pool in (first, second):
        registry_services.lifecycle_transition(
            obj=pool, to=Status.FAILED, reason="arithmetic", actor=None, door=Door.WORKER
        )
    third = PoolFactory(center=first.center)
    cooldown = registry_selectors.resubmit_cooldown(third, timezone.now())
    assert cooldown is not None and (cooldown.failures, cooldown.seconds) == (2, 120)
    # Another center of the same operator is not held back.
    assert registry_selectors.resubmit_cooldown(make_pool(acme), timezone.now()) is None


@pytest.mark.parametrize("door", ["pool", "center"])
def test_retiring_a_pool_once_its_challenge_is_out_counts_as_a_failure(
    door: str, pool_at: Any, start_agent: Any, acme: Any, alice: Any, monkeypatch: Any
) -> None:
    from verification import agent_client

    pool = force_status(
        pool_at(acme, start_agent(agent_config(SimulationMode.CHEAT_WRONG))), Status.SUBMITTED
    )
    api = APIClient()
    api.force_authenticate(alice)
    original = agent_client.open_benchmark

    def retire_then_open(channel: Any, **kwargs: Any) -> Any:
        # The agent has the challenge and sees which steps are checked: the operator retires.
        url = (
            f"/api/v1/pools/{pool.national_id}/transition/"
            if door == "pool"
            else f"/api/v1/centers/{pool.center.national_id}/transition/"
        )
        assert api.post(url, {"to": "retired", "reason": "gone"}).status_code == 200
        return original(channel, **kwargs)

    monkeypatch.setattr(agent_client, "open_benchmark", retire_then_open)
    run = run_like_the_task(pool, Trigger.SUBMITTED)

    assert run.state == RunState.FAILED  # the real verdict stays on the run
    assert pool.status == Status.RETIRED  # the fault landed: no move to failed was possible
    assert not LifecycleTransition.objects.filter(object_id=pool.pk, to_status=Status.FAILED)
    assert pool.status_reason.startswith(ABANDONED_REASON)
    cooldown = registry_selectors.resubmit_cooldown(pool, timezone.now())
    assert cooldown is not None and cooldown.failures == 1


def test_retiring_or_withdrawing_a_pool_whose_run_is_only_queued_counts_nothing(
    pool_at: Any, acme: Any, alice: Any
) -> None:
    api = APIClient()
    api.force_authenticate(alice)
    for to in ("draft", "retired"):
        pool = force_status(pool_at(acme, DEAD_ENDPOINT), Status.SUBMITTED)
        run, _ = services.verification_request(
            pool=pool, trigger=Trigger.SUBMITTED, actor=None, door=Door.WORKER
        )
        assert run.state == RunState.QUEUED  # nothing sent to the agent yet
        answer = api.post(f"/api/v1/pools/{pool.national_id}/transition/", {"to": to})
        assert answer.status_code == 200
        assert registry_selectors.resubmit_cooldown(pool, timezone.now()) is None
