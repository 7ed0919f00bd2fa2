"""Concurrent writers on registry objects: no lost update, no double transition (RELIABILITY B8)."""

import threading
from typing import Any

import pytest
from django.db import connection

from registry import services
from registry.choices import Door, Status
from registry.errors import IllegalTransition
from registry.models import LifecycleTransition, Pool
from tests.figures import figure

WRITERS = 10


def _race(n: int, fn: Any) -> list[Any]:
    """Run ``fn(i)`` in ``n`` threads released together; each thread has its own connection."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:  # the outcome is what the test inspects
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_concurrent_patches_with_the_same_version_let_exactly_one_through(
    alice: Any, acme: Any, make_pool: Any, api_as: Any
) -> None:
    pool = make_pool(acme)
    clients = [api_as(alice) for _ in range(WRITERS)]
    url = f"/api/v1/pools/{pool.national_id}/"
    codes = _race(
        WRITERS,
        lambda i: (
            clients[i]
            .patch(url, {"name": f"writer {i}", "version": pool.version}, format="json")
            .status_code
        ),
    )
    figure("B8.version", writers=WRITERS, ok=codes.count(200), precondition_failed=codes.count(409))
    assert sorted(codes) == [200] + [409] * (WRITERS - 1)
    winner = codes.index(200)
    pool.refresh_from_db()
    assert pool.name == f"writer {winner}" and pool.version == 2


@pytest.mark.django_db(transaction=True)
def test_concurrent_transitions_from_the_same_state_happen_once(acme: Any, make_pool: Any) -> None:
    pool = make_pool(acme, Status.VERIFYING)

    def move(i: int) -> str:
        target = Pool.objects.get(pk=pool.pk)
        services.lifecycle_transition(
            obj=target,
            to=Status.ACTIVE if i % 2 else Status.FAILED,
            reason=f"w{i}",
            actor=None,
            door=Door.WORKER,
        )
        return target.status

    results = _race(WRITERS, move)
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1
    assert all(isinstance(r, IllegalTransition) for r in results if not isinstance(r, str))
    assert LifecycleTransition.objects.filter(object_id=pool.pk).count() == 1
    pool.refresh_from_db()
    assert pool.status == winners[0]


@pytest.mark.django_db(transaction=True)
def test_concurrent_registrations_get_distinct_national_ids(personas: Any) -> None:
    from registry.models import Cluster

    cluster = Cluster.objects.get(code="QY")
    users = [personas["alice"], personas["carol"]] * (WRITERS // 2)

    def register(i: int) -> str:
        center = services.center_register(
            actor=users[i],
            door=Door.API,
            data={
                "cluster": cluster,
                "name": f"C{i}",
                "latitude": 35.7,
                "longitude": 107.6,
                "pue": 1.3,
                "green_power_share": 0.4,
            },
        )
        return center.national_id

    ids = _race(WRITERS, register)
    assert all(isinstance(i, str) for i in ids), ids
    assert len(set(ids)) == WRITERS
