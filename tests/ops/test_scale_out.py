"""Scale-out on one machine (issue 6): two web processes, two broker processes and two Celery
workers against one PostgreSQL database and one Redis, serving one coherent registry and ledger.

Every process is real and separate: ``gunicorn`` twice, ``manage.py run_broker`` twice, ``celery
worker`` twice (different ``-n`` names), and two simulated site agents (gRPC servers on loopback).
The test database is shared through committed rows (a transactional test).

Driven concurrently:
- AI firms book scarce A100 capacity (two pools of 8) through both brokers (gRPC) and both web
  processes (REST); every idempotency key is sent again through the *other* process of the same
  door, and every third one through the other door as well;
- the operator submits pools through both web processes; their verifications are queued in Redis
  and taken by whichever worker is free.

Then: every acknowledged booking exists once with its allocations, a key never maps to two
bookings, no pool is over capacity at any instant (``brokers.ledger.oversold_pools``), every
submitted pool has exactly one finished run and one move to ``active``, and each worker
finished at least one run.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import os
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from django.db.models import Sum

from agent.server import build_server as build_agent
from brokers.client.client import BrokerClient, workload_spec
from brokers.ledger import oversold_pools
from brokers.models import Allocation, Booking
from registry import services as registry_services
from registry.choices import OrgKind, Role, Status
from registry.models import Accelerator, Cluster, LifecycleTransition, Pool
from tests.brokers.broker_testing import PYTHON, ROOT, Child, child_env, free_port, wait_for
from tests.factories import CenterFactory, OrganizationFactory, PoolFactory, UserFactory
from tests.figures import figure
from tests.harness.platform import http_json, http_status
from tests.harness.procs import children_of
from tests.verification.conftest import WORKER_SETTINGS, agent_config
from verification.choices import FINISHED_STATES, RunState
from verification.models import VerificationRun

pytestmark = pytest.mark.django_db(transaction=True)

SCARCE_POOLS = 2  # of 8 A100s each: 16 accelerators for ~70 asked
SUBMITTED_POOLS = 6
BOOKINGS_PER_CLIENT = 6
ENV = {
    "BROKER_DISPATCH": "0",  # dispatch to agents is tested elsewhere; here: the ledger
    "DJANGO_DEBUG": "0",
    "LOG_LEVEL": "INFO",
    **WORKER_SETTINGS,
}


@contextmanager
def started(child: Child, ready: Any, what: str) -> Iterator[Child]:
    try:
        wait_for(lambda: ready(child), timeout=90, what=f"{what}\n{child.output()[-3000:]}")
        yield child
    finally:
        child.stop()


def web(stack: ExitStack) -> str:
    port = free_port()
    argv = [
        str(ROOT / ".venv" / "bin" / "gunicorn"), "interconnect.wsgi:application",
        "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4",
        "--worker-class", "gthread", "--timeout", "60",
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    stack.enter_context(
        started(Child(argv, child_env(**ENV)), lambda c: http_status(f"{base}/healthz") == 200,
                "gunicorn")
    )  # fmt: skip
    return base


def broker(stack: ExitStack) -> str:
    port = free_port()
    argv = [PYTHON, "manage.py", "run_broker", "--port", str(port), "--processes", "1"]
    stack.enter_context(
        started(
            Child(argv, child_env(**ENV)),
            lambda c: any("broker listening" in line for line in c.lines),
            "run_broker",
        )
    )
    return f"127.0.0.1:{port}"


def worker(stack: ExitStack, name: str) -> Child:
    argv = [
        str(ROOT / ".venv" / "bin" / "celery"), "-A", "interconnect", "worker", "-l", "info",
        "-P", "prefork", "-c", "1", "--without-mingle", "--without-gossip",
        "-n", f"s1-{name}-{os.getpid()}@%h",
    ]  # fmt: skip
    return stack.enter_context(
        started(
            Child(argv, child_env(**ENV)),
            lambda c: any(" ready." in line for line in c.lines),
            f"celery worker {name}",
        )
    )


@dataclass
class Ledger:
    """What the clients were told: key -> booking ids answered (must be one), and counts."""

    answers: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    asked: dict[tuple[str, str], int] = field(default_factory=dict)  # (org, key) -> count
    attempts: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)
    served: Counter[str] = field(default_factory=Counter)  # process -> booking answers given
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(
        self, via: str, org: str, key: str, count: int, booking_id: str | None, error: str = ""
    ) -> None:
        with self.lock:
            self.attempts += 1
            self.asked[(org, key)] = count
            if booking_id:
                self.answers[(org, key)].add(booking_id)
                self.served[via] += 1
            elif error:
                self.errors.append(error)
            else:
                self.refused += 1


@functools.cache
def _this_hour() -> dt.datetime:
    # Once per run: a key replayed across the top of an hour asks the same window (a key sent
    # again with another request is refused).
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


def start_time(slot: int) -> dt.datetime:
    return _this_hour() + dt.timedelta(hours=2, minutes=30 * slot)  # windows of 1 h that overlap


def book_grpc(
    target: str, token: str, org: str, key: str, count: int, slot: int, led: Ledger
) -> None:
    spec = workload_spec(
        accelerator_model="nvidia-a100-80g",
        count=count,
        earliest_start=start_time(slot),
        duration_seconds=3600,
    )
    with BrokerClient(target, token, timeout=30) as client:
        try:
            booking = client.book(spec, idempotency_key=key)
            led.note(target, org, key, count, booking.booking_id)
        except grpc.RpcError as exc:
            refused = exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED)
            led.note(
                target,
                org,
                key,
                count,
                None,
                "" if refused else f"gRPC {exc.code()} {exc.details()}",
            )


def book_rest(
    base: str, token: str, org: str, key: str, count: int, slot: int, led: Ledger
) -> None:
    body = {
        "spec": {
            "accelerator_model": "nvidia-a100-80g",
            "count": count,
            "earliest_start": start_time(slot).isoformat(),
            "duration_seconds": 3600,
        },
        "idempotency_key": key,
    }
    status, data, _ = http_json("POST", f"{base}/api/v1/bookings/", token=token, body=body,
                                timeout=30)  # fmt: skip
    if status in (200, 201):
        led.note(base, org, key, count, data["national_id"])
    else:
        led.note(base, org, key, count, None, "" if status == 409 else f"REST {status} {data}")


def firm_client(
    doors: dict[str, list[str]], door: str, index: int, org: str, token: str, led: Ledger
) -> None:
    """One client: books through process ``index`` of ``door``, replays each key through the
    other process (and every third key through the other door)."""
    call = {"grpc": book_grpc, "rest": book_rest}
    other_door = "rest" if door == "grpc" else "grpc"
    for n in range(BOOKINGS_PER_CLIENT):
        key = f"{door}{index}-{n}-{uuid.uuid4().hex[:8]}"
        count, slot = (2, 4)[n % 2], n % 3
        call[door](doors[door][index], token, org, key, count, slot, led)
        call[door](doors[door][1 - index], token, org, key, count, slot, led)
        if n % 3 == 0:
            call[other_door](doors[other_door][index], token, org, key, count, slot, led)


def test_two_webs_two_brokers_two_workers_one_ledger(transactional_db: Any) -> None:
    import redis
    from django.conf import settings

    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # our own db (8): stale tasks
    acme = OrganizationFactory(slug="acme", kind=OrgKind.OPERATOR)
    alice = UserFactory(username="alice", membership__organization=acme,
                        membership__role=Role.ADMIN)  # fmt: skip
    firms = {}
    for slug in ("deepai", "otherai"):
        org = OrganizationFactory(slug=slug, kind=OrgKind.AI_FIRM)
        user = UserFactory(username=f"{slug}-admin", membership__organization=org,
                           membership__role=Role.ADMIN)  # fmt: skip
        firms[slug] = registry_services.token_create(user=user, name="scale")[1]
    a100 = Accelerator.objects.get(slug="nvidia-a100-80g")
    scarce = [
        PoolFactory(
            center=CenterFactory(
                operator=acme, cluster=Cluster.objects.get(code="ZW"), status="active"
            ),
            accelerator=a100,
            nodes=1,
            accelerators_per_node=8,
            price_per_accelerator_hour="10.00",
            status="active",
        )  # fmt: skip
        for _ in range(SCARCE_POOLS)
    ]
    operator_token = registry_services.token_create(user=alice, name="scale")[1]

    with ExitStack() as stack:
        agents = []
        for _ in range(2):
            runtime = build_agent("127.0.0.1:0", agent_config=agent_config())
            stack.callback(lambda r=runtime: r.stop(grace=0).wait())
            agents.append(f"127.0.0.1:{runtime.port}")
        drafts = [
            PoolFactory(
                center=CenterFactory(operator=acme, agent_endpoint=agents[i % 2]),
                accelerator=a100,
                accelerators_per_node=8,
                nodes=4,
                declared_tflops_per_accelerator=312.0,
            )  # fmt: skip
            for i in range(SUBMITTED_POOLS)
        ]
        doors = {"rest": [web(stack), web(stack)], "grpc": [broker(stack), broker(stack)]}
        workers = [worker(stack, "a"), worker(stack, "b")]

        led = Ledger()
        threads = [
            threading.Thread(target=firm_client, args=(doors, door, i, org, token, led))
            for door, i, (org, token) in itertools.product(("grpc", "rest"), (0, 1), firms.items())
        ]
        submitted: list[tuple[int | None, Any]] = []

        def submit_all() -> None:
            for i, pool in enumerate(drafts):
                url = f"{doors['rest'][i % 2]}/api/v1/pools/{pool.national_id}/submit/"
                status, data, _ = http_json("POST", url, token=operator_token, body={})
                submitted.append((status, data))

        threads.append(threading.Thread(target=submit_all))
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a client hung"

        def all_finished() -> bool:
            runs = VerificationRun.objects.filter(pool__in=drafts)
            return runs.count() >= SUBMITTED_POOLS and all(r.state in FINISHED_STATES for r in runs)

        wait_for(all_finished, timeout=90, what="every verification run finished")
        pids = {
            name: {w.proc.pid, *children_of(w.proc.pid)}
            for name, w in zip("ab", workers, strict=True)
        }
        runs = list(VerificationRun.objects.filter(pool__in=drafts))

    # --- one coherent ledger ---
    assert not led.errors, led.errors[:5]
    doubled = sum(len(ids) > 1 for ids in led.answers.values())
    acked = {ids.pop(): key for key, ids in led.answers.items() if len(ids) == 1}
    rows = {b.national_id: b for b in Booking.objects.filter(national_id__in=acked)}
    lost = [bid for bid in acked if bid not in rows]
    wrong = [
        bid
        for bid, (org, key) in acked.items()
        if bid in rows
        and (
            rows[bid].idempotency_key != key
            or rows[bid].organization.slug != org
            or Allocation.objects.filter(booking=rows[bid]).aggregate(n=Sum("accelerators"))["n"]
            != led.asked[(org, key)]
        )
    ]
    per_key = Counter(Booking.objects.values_list("organization_id", "idempotency_key"))
    doubled += sum(n > 1 for n in per_key.values())
    unacked = Booking.objects.exclude(national_id__in=acked).count()
    oversold = oversold_pools()
    booked = Allocation.objects.filter(pool__in=scarce).aggregate(n=Sum("accelerators"))["n"]

    # --- verifications: once each, by both workers ---
    by_worker: Counter[str] = Counter()
    for run in runs:
        pid = int(run.claimed_by.split(":")[1])
        by_worker[next((n for n, p in pids.items() if pid in p), "unknown")] += 1
    per_pool = Counter(run.pool_id for run in runs)
    activations = Counter(
        LifecycleTransition.objects.filter(
            object_type="registry.pool", object_id__in=[p.pk for p in drafts], to_status="active"
        ).values_list("object_id", flat=True)
    )

    figure(
        "OPS.scale_out",
        web=2,
        brokers=2,
        workers=2,
        agents=2,
        booking_calls=led.attempts,
        keys=len(led.asked),
        acked=len(acked),
        refused=led.refused,
        lost=len(lost),
        doubled=doubled,
        wrong=len(wrong),
        oversold=len(oversold),
        accelerators_booked=booked,
        capacity_per_instant=8 * SCARCE_POOLS,
        answers_by_process=sorted(led.served.values()),
        runs=len(runs),
        runs_by_worker=dict(by_worker),
    )
    assert [s for s, _ in submitted] == [200] * SUBMITTED_POOLS, submitted
    assert acked and led.refused, "the capacity was not contended"
    # Each of the four front processes answered bookings: the ledger is shared, not partitioned.
    assert set(led.served) == {*doors["rest"], *doors["grpc"]}, led.served
    assert lost == [] and doubled == 0 and wrong == [] and unacked == 0
    assert oversold == {}
    assert per_pool == dict.fromkeys([p.pk for p in drafts], 1)
    assert all(run.state == RunState.PASSED for run in runs), [r.verdict_reason for r in runs]
    assert activations == dict.fromkeys([p.pk for p in drafts], 1)
    assert set(
        Pool.objects.filter(pk__in=[p.pk for p in drafts]).values_list("status", flat=True)
    ) == {Status.ACTIVE}
    assert by_worker["a"] >= 1 and by_worker["b"] >= 1, by_worker
