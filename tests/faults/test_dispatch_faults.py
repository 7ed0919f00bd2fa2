"""X2 on dispatch: the Celery worker killed (MainProcess SIGKILL) while it starts and follows
booked workloads at a center's agent.

Real processes: the gRPC broker (bookings commit and enqueue ``booking_dispatch``), a private
Redis, a prefork worker that starts each workload on a simulated agent and follows it to the
end, and the agent (time-scaled: an hour-long booking runs about 3.6 s). The worker is killed
while workloads run; a new one takes the unacknowledged tasks back after the visibility
timeout. Every booking must end ``finished`` with its workload started ONCE at the agent (one
``dispatched`` event: StartWorkload is idempotent per workload id) and one usage record. The
oversell sampler runs every 100 ms from the first booking to the end (and once more at the end):
the bookings hold the whole pool, so a redelivered dispatch that booked or re-placed anything
again would show.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from brokers.client.client import BrokerClient, workload_spec
from tests.harness.figures import Figure, rounded
from tests.harness.oversell import OversellSampler, sweep
from tests.harness.platform import Platform
from tests.harness.procs import PYTHON, ManagedProcess, free_port, port_open, wait_until
from tests.harness.redis import PrivateRedis

pytestmark = pytest.mark.slow

BOOKINGS = 8
VISIBILITY_TIMEOUT = 10.0
# Below the visibility timeout; a workload here runs about 3.6 s, so one follow step ends well
# within it.
TASK_TIME_LIMIT = 8.0
TIME_SCALE = "0.001"

POOL = """
from django.contrib.auth import get_user_model
from registry import services
from registry.choices import Door
from registry.models import Accelerator, Center, Cluster, Pool
actor = get_user_model().objects.get(username="zhongwei")
center = services.center_register(actor=actor, door=Door.CLI, data={
    "cluster": Cluster.objects.get(code="ZW"), "name": "dispatch center", "latitude": 37.5,
    "longitude": 105.2, "pue": 1.2, "green_power_share": 0.5, "agent_endpoint": ENDPOINT,
})
pool = services.pool_create(actor=actor, door=Door.CLI, center=center, data={
    "name": "dispatch pool", "accelerator": Accelerator.objects.get(slug="nvidia-a100-80g"),
    "accelerators_per_node": 8, "nodes": 2, "price_per_accelerator_hour": "10.00",
    "currency": "CNY", "declared_tflops_per_accelerator": 312.0,
})
# Test set-up only: a listed pool (verification is not under test here).
Center.objects.filter(pk=center.pk).update(status="active")
Pool.objects.filter(pk=pool.pk).update(status="active")
RESULT = pool.national_id
"""


def _statuses(platform: Platform) -> dict[str, int]:
    return dict(platform.sql("SELECT status, count(*) FROM brokers_booking GROUP BY status"))


def test_dispatch_survives_the_worker_killed_mid_workload(
    make_platform: Callable[..., Platform],
    make_redis: Callable[..., PrivateRedis],
    figure: Callable[..., Figure],
) -> None:
    redis = make_redis(appendonly=False)
    platform = make_platform(broker_url=redis.url)
    fig = figure("X2.worker_main_kill_dispatch", broker="redis", attempted=BOOKINGS)
    agent_port, broker_port = free_port(), free_port()
    platform.django(POOL.replace("ENDPOINT", repr(f"127.0.0.1:{agent_port}")))
    platform.procs.start(
        "agent",
        [
            PYTHON, "-m", "agent", "--simulate", f"honest:{agent_port}", "--time-scale", TIME_SCALE,
            "--model", "nvidia-a100-80g", "--accelerators", "8", "--nodes", "2",
            "--declared-tflops", "312",
        ],
        env=platform.env(),
    )  # fmt: skip
    platform.procs.start(
        "broker",
        [PYTHON, "manage.py", "run_broker", "--port", str(broker_port)],
        # One firm books the whole pool here: lift the fair-share cap for scarce pools.
        env=platform.env(BROKER_FAIR_SHARE_CAP="1.0"),
    )
    wait_until(lambda: port_open(agent_port) and port_open(broker_port), timeout=60, what="up")
    worker = platform.start_worker(
        visibility_timeout=VISIBILITY_TIMEOUT, task_time_limit=TASK_TIME_LIMIT
    )
    sampler = OversellSampler(lambda: platform.pg.connect(platform.dbname))
    sampler.start()
    try:
        _book_and_kill(platform, fig, broker_port, worker)
    finally:
        sampler.stop()
    with platform.pg.connect(platform.dbname) as conn:
        final_over = sweep(conn)
    sampled = sampler.figure()
    fig.update(
        oversold=max(sampled["oversold"], len(final_over)),
        max_over=max(sampled["max_over"], max(final_over.values(), default=0)),
        samples=sampled["samples"],
        sample_errors=sampled["sample_errors"],
    )
    assert fig["redelivered"] >= 1, "no dispatch was in flight at the kill: the test proved nothing"
    assert (fig["lost"], fig["doubled"], fig["never_dispatched"]) == (0, 0, 0)
    assert fig["usage_records"] == BOOKINGS
    assert fig["samples"] > 0 and fig["oversold"] == 0, sampler.oversold_pools


def _book_and_kill(
    platform: Platform, fig: Figure, broker_port: int, worker: ManagedProcess
) -> None:
    """Book the pool full, kill the worker mid-workload, start another, wait for the end."""
    with BrokerClient(f"127.0.0.1:{broker_port}", platform.token("deepcurrent")) as client:
        booked = [
            client.book(
                workload_spec(accelerator_model="nvidia-a100-80g", count=2), idempotency_key=f"d{i}"
            ).booking_id
            for i in range(BOOKINGS)
        ]
    fig["acked"] = len(booked)
    wait_until(
        lambda: _statuses(platform).get("running", 0) >= 1, timeout=60, what="workloads running"
    )
    worker.kill()
    restarted_at = time.monotonic()
    new_worker = platform.start_worker(
        "worker-new", visibility_timeout=VISIBILITY_TIMEOUT, task_time_limit=TASK_TIME_LIMIT
    )
    wait_until(
        lambda: _statuses(platform).get("finished", 0) >= BOOKINGS,
        timeout=VISIBILITY_TIMEOUT + 60,
        what=f"all bookings finished (now {_statuses(platform)})",
    )
    fig["drained_s"] = rounded(time.monotonic() - restarted_at)
    dispatched = dict(
        platform.sql(
            "SELECT b.national_id, count(e.id) FROM brokers_booking b LEFT JOIN "
            "brokers_bookingevent e ON e.booking_id = b.id AND e.kind = 'dispatched' "
            "GROUP BY b.national_id"
        )
    )
    usage = platform.sql(
        "SELECT count(*) FROM brokers_usagerecord u JOIN brokers_allocation a "
        "ON a.id = u.allocation_id"
    )[0][0]
    received = re.compile(r"booking_dispatch\[([0-9a-f-]+)\] received")
    in_flight = set(received.findall(worker.log()))
    fig.update(
        killed_in_flight=len(in_flight),
        redelivered=len(in_flight & set(received.findall(new_worker.log()))),
        statuses=_statuses(platform),
        lost=BOOKINGS - _statuses(platform).get("finished", 0),
        doubled=sum(1 for n in dispatched.values() if n > 1),
        never_dispatched=sum(1 for n in dispatched.values() if n == 0),
        usage_records=usage,
    )
