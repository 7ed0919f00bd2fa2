"""X1/X2/X6 on Celery: webhook deliveries while workers and the message broker are killed.

Real processes only: a private redis-server, real prefork workers (``acks_late``,
``reject_on_worker_lost``, prefetch 1, from the project's settings), the real
``webhook_deliver_task``, and a real HTTP receiver on loopback that counts deliveries by event
id and answers after a short delay, so that kills land mid-delivery.

Figure keys: attempted (events emitted), acked (deliveries committed by ``webhook_emit``),
delivered (rows ``delivered`` in the database), lost (an event never received or not
``delivered`` in the end), doubled (a delivery row with more than one recorded attempt),
redelivered (extra HTTP posts after a kill: at-least-once, reported, not hidden), recovery_s;
oversold is None (``n/a``): no capacity is booked.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness.figures import Figure, rounded
from tests.harness.platform import Platform
from tests.harness.procs import ManagedProcess, wait_until
from tests.harness.receiver import WebhookReceiver
from tests.harness.redis import PrivateRedis

pytestmark = pytest.mark.slow

# Kept above the task time limit given to the worker (see tests/harness/worker.py), and far
# above the longest a delivery can take (the 5 s HTTP timeout of registry.webhooks).
VISIBILITY_TIMEOUT = 10.0
TASK_TIME_LIMIT = 8.0

EMIT = """
import os, time
from django.db import transaction
from registry import webhooks
from registry.models import Organization, WebhookDelivery, WebhookSubscription
org = Organization.objects.get(slug="zhongwei-green")
sub, _ = WebhookSubscription.objects.get_or_create(
    organization=org, url=os.environ["HOOK_URL"], defaults={"events": ["pool.verified"]}
)
count, interval = int(os.environ["EMIT_COUNT"]), float(os.environ["EMIT_INTERVAL"])
publish_failed = 0
for i in range(count):
    try:
        with transaction.atomic():
            webhooks.webhook_emit(organization=org, event="pool.verified", data={"n": i})
    except Exception as exc:  # the row is committed; only the publish after commit failed
        publish_failed += 1
        print("publish failed:", type(exc).__name__, flush=True)
    time.sleep(interval)
RESULT = {"publish_failed": publish_failed}
"""


def _emit(platform: Platform, url: str, count: int, interval: float = 0.0) -> dict:
    code = EMIT.replace('os.environ["HOOK_URL"]', repr(url))
    code = code.replace('int(os.environ["EMIT_COUNT"])', str(count))
    code = code.replace('float(os.environ["EMIT_INTERVAL"])', str(interval))
    return platform.django(code)


def _deliveries(platform: Platform) -> list[tuple[str, str, int]]:
    return [
        (str(event_id), state, attempts)
        for event_id, state, attempts in platform.sql(
            "SELECT event_id, state, attempts FROM registry_webhookdelivery"
        )
    ]


def _delivered(platform: Platform) -> int:
    return platform.sql("SELECT count(*) FROM registry_webhookdelivery WHERE state = 'delivered'")[
        0
    ][0]


def _wait_for_deliveries_to_settle(platform: Platform, expected: int, quiet: float = 3.0) -> None:
    """Until every delivery is delivered, or none has been for ``quiet`` seconds (then the rest
    is not coming: reported as lost, without waiting out a fixed timeout)."""
    last, since = -1, time.monotonic()
    while True:
        delivered = _delivered(platform)
        if delivered >= expected:
            return
        if delivered != last:
            last, since = delivered, time.monotonic()
        elif time.monotonic() - since > quiet:
            return
        time.sleep(0.2)


def _settle(platform: Platform, receiver: WebhookReceiver, fig: Figure) -> None:
    rows = _deliveries(platform)
    received = receiver.received()
    fig.update(
        acked=len(rows),
        delivered=sum(1 for _, state, _ in rows if state == "delivered"),
        lost=sum(1 for eid, state, _ in rows if state != "delivered" or eid not in received),
        doubled=sum(1 for _, state, attempts in rows if state == "delivered" and attempts > 1),
        redelivered=receiver.redelivered(),
        oversold=None,  # deliveries book no capacity: nothing can be oversold
    )


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(delay=0.3)
    yield r
    r.close()


@pytest.fixture
def celery_platform(
    make_platform: Callable[..., Platform], make_redis: Callable[..., PrivateRedis]
) -> tuple[Platform, PrivateRedis]:
    redis = make_redis(appendonly=False)
    return make_platform(broker_url=redis.url), redis


def _worker(platform: Platform, name: str = "worker") -> ManagedProcess:
    return platform.start_worker(
        name, visibility_timeout=VISIBILITY_TIMEOUT, task_time_limit=TASK_TIME_LIMIT
    )


def test_deliveries_survive_worker_children_killed_mid_task(
    celery_platform: tuple[Platform, PrivateRedis],
    receiver: WebhookReceiver,
    figure: Callable[..., Figure],
) -> None:
    """X1: SIGKILL a pool child 5 times while deliveries run; every event is delivered once."""
    platform, _ = celery_platform
    events, kills = 30, 5
    fig = figure("X1.worker_child_kill", broker="redis", attempted=events, kills=0, recovery_s=None)
    worker = _worker(platform)
    _emit(platform, receiver.url, events)
    wait_until(lambda: len(receiver.received()) >= 3, timeout=30, what="first deliveries")
    last_kill = time.monotonic()
    for n in range(kills):
        children = worker.children()
        assert children, "the prefork pool has no children"
        os.kill(children[n % len(children)], signal.SIGKILL)
        fig["kills"] += 1
        last_kill = time.monotonic()
        time.sleep(0.7)
    first = wait_until(lambda: receiver.first_after(last_kill), timeout=60, what="recovery")
    fig["recovery_s"] = rounded(first - last_kill)
    wait_until(lambda: _delivered(platform) >= events, timeout=90, what="all delivered")
    time.sleep(1.0)  # a late redelivery would show up here
    # One "Job: N" per task whose child died under it (each kill that landed mid-task).
    jobs = re.findall(r"exited prematurely: signal 9.*Job: (\d+)", worker.log())
    fig["worker_lost"] = len(set(jobs))
    _settle(platform, receiver, fig)
    assert fig["worker_lost"] >= 1, "no kill landed mid-task: the test proved nothing"
    assert (fig["acked"], fig["delivered"], fig["lost"], fig["doubled"]) == (events, events, 0, 0)


def test_deliveries_survive_the_worker_main_process_killed(
    celery_platform: tuple[Platform, PrivateRedis],
    receiver: WebhookReceiver,
    figure: Callable[..., Figure],
) -> None:
    """X2 (Redis): SIGKILL the worker's MainProcess, start a new worker.

    The dead worker's reserved and running tasks stay unacknowledged in Redis; they come back
    after the visibility timeout, so ``drained_s`` is at least about VISIBILITY_TIMEOUT.
    """
    platform, _ = celery_platform
    events = 20
    fig = figure(
        "X2.worker_main_kill",
        broker="redis",
        attempted=events,
        visibility_timeout_s=VISIBILITY_TIMEOUT,
        recovery_s=None,
    )
    worker = _worker(platform)
    _emit(platform, receiver.url, events)
    wait_until(lambda: len(receiver.received()) >= 4, timeout=30, what="first deliveries")
    worker.kill()
    children = worker.children()  # orphans (if any) die with the process group at teardown
    fig["orphaned_children"] = len(children)
    restarted_at = time.monotonic()
    _worker(platform, "worker-new")
    first = wait_until(lambda: receiver.first_after(restarted_at), timeout=60, what="recovery")
    fig["recovery_s"] = rounded(first - restarted_at)
    wait_until(
        lambda: _delivered(platform) >= events,
        timeout=VISIBILITY_TIMEOUT + 45,
        what="all delivered (after the visibility timeout)",
    )
    fig["drained_s"] = rounded(time.monotonic() - restarted_at)
    time.sleep(1.0)
    _settle(platform, receiver, fig)
    assert (fig["acked"], fig["delivered"], fig["lost"], fig["doubled"]) == (events, events, 0, 0)


@pytest.mark.parametrize("appendonly", [False, True], ids=["aof_off", "aof_on"])
def test_deliveries_survive_the_message_broker_killed(
    appendonly: bool,
    make_platform: Callable[..., Platform],
    make_redis: Callable[..., PrivateRedis],
    receiver: WebhookReceiver,
    figure: Callable[..., Figure],
) -> None:
    """X6: kill -9 redis-server with a full queue, emit while it is down, restart it after.

    End to end, nothing may be lost: a delivery row committed by ``webhook_emit`` whose task
    message died with the broker (never written to the AOF) or could not be published (broker
    down) must still be sent. Queue loss at the broker level is reported as
    ``broker_lost_msgs``; with AOF (``appendfsync everysec``) it should be 0.
    """
    redis = make_redis(appendonly=appendonly)
    platform = make_platform(broker_url=redis.url)
    queued_before, during_outage = 30, 5
    fig = figure(
        "X6.broker_restart",
        broker="redis",
        aof=appendonly,
        attempted=queued_before + during_outage,
        recovery_s=None,
    )
    # No worker yet: the queue fills up, so the kill finds messages in Redis.
    _emit(platform, receiver.url, queued_before)
    assert redis.queue_length() == queued_before
    time.sleep(1.5)  # past one "appendfsync everysec"
    redis.kill()
    fig["publish_failed"] = _emit(platform, receiver.url, during_outage)["publish_failed"]
    redis.start()
    back_at = time.monotonic()
    fig["broker_lost_msgs"] = queued_before - redis.queue_length()
    _worker(platform)
    # The outbox relay (a periodic task in production; grace 0 here) re-publishes the pending
    # deliveries whose task messages died with the broker or were never published.
    fig["relayed"] = platform.django(
        "from registry.webhooks import webhook_requeue_pending\n"
        "RESULT = webhook_requeue_pending(grace_seconds=0)"
    )
    # A missing recovery is reported, not raised, and so is a shortfall (through "lost").
    with contextlib.suppress(TimeoutError):
        first = wait_until(lambda: receiver.first_after(back_at), timeout=4, what="recovery")
        fig["recovery_s"] = rounded(first - back_at)
    _wait_for_deliveries_to_settle(platform, fig["attempted"])
    _settle(platform, receiver, fig)
    assert fig["acked"] == fig["attempted"]
    assert fig["lost"] == 0, (
        f"{fig['lost']} committed deliveries were never sent: their task messages were lost "
        "with the broker and nothing re-publishes pending deliveries"
    )
    assert fig["doubled"] == 0
