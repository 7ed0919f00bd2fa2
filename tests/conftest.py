"""Shared fixtures: the national topology, and the personas every test talks about.

Personas (healthchecks-style):
- ``alice``: admin of operator ``acme`` — sees and changes acme's centers and pools in any state,
  may delete drafts, manages acme's tokens.
- ``bob``: member of ``acme`` — like alice, but may not delete.
- ``carol``: admin of another operator, ``rival`` — never sees acme's drafts, never changes acme's
  objects (a 404, not a 403).
- ``dave``: admin of AI firm ``deepai`` — reads listed (verified) capacity, writes no capacity.
- ``pat``: platform staff — sees everything, may suspend.
- anonymous — reads public data and listed capacity only.
"""

from collections.abc import Callable
from typing import Any

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from registry import services
from registry.choices import OrgKind, Role, Status
from registry.models import Center, Pool
from tests.factories import CenterFactory, OrganizationFactory, PoolFactory, UserFactory


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: Any, django_db_blocker: Any) -> None:
    """Seed the national topology and catalog once for the whole session."""
    with django_db_blocker.unblock():
        call_command("seed_national_topology", verbosity=0)


@pytest.fixture(autouse=True)
def _national_topology(request: pytest.FixtureRequest) -> None:
    """Make sure the topology is there for every database test.

    A ``transaction=True`` test ends with a flush of every table, which also removes the data
    seeded once per session; the next database test seeds it again (inside its own transaction,
    or committed for a transactional test).
    """
    if request.node.get_closest_marker("django_db") is None and not (
        {"db", "transactional_db", "live_server"} & set(request.fixturenames)
    ):
        return
    request.getfixturevalue("_django_db_helper")
    from registry.models import Hub

    if not Hub.objects.exists():
        call_command("seed_national_topology", verbosity=0)
    from brokers.models import BookingClass

    if not BookingClass.objects.exists():
        # Rows of a data migration: a flush removes them too.
        from brokers.market import ensure_classes

        ensure_classes()


@pytest.fixture
def acme(db: Any) -> Any:
    return OrganizationFactory(slug="acme", name="Acme Compute", kind=OrgKind.OPERATOR)


@pytest.fixture
def rival(db: Any) -> Any:
    return OrganizationFactory(slug="rival", name="Rival Compute", kind=OrgKind.OPERATOR)


@pytest.fixture
def deepai(db: Any) -> Any:
    return OrganizationFactory(slug="deepai", name="Deep AI", kind=OrgKind.AI_FIRM)


@pytest.fixture
def platform_org(db: Any) -> Any:
    return OrganizationFactory(slug="platform", name="Platform", kind=OrgKind.PLATFORM)


@pytest.fixture
def alice(acme: Any) -> Any:
    return UserFactory(username="alice", membership__organization=acme, membership__role=Role.ADMIN)


@pytest.fixture
def bob(acme: Any) -> Any:
    return UserFactory(username="bob", membership__organization=acme, membership__role=Role.MEMBER)


@pytest.fixture
def carol(rival: Any) -> Any:
    return UserFactory(
        username="carol", membership__organization=rival, membership__role=Role.ADMIN
    )


@pytest.fixture
def dave(deepai: Any) -> Any:
    return UserFactory(
        username="dave", membership__organization=deepai, membership__role=Role.ADMIN
    )


@pytest.fixture
def pat(platform_org: Any) -> Any:
    return UserFactory(
        username="pat", membership__organization=platform_org, membership__role=Role.ADMIN
    )


@pytest.fixture
def personas(alice: Any, bob: Any, carol: Any, dave: Any, pat: Any) -> dict[str, Any]:
    return {"anon": None, "alice": alice, "bob": bob, "carol": carol, "dave": dave, "pat": pat}


@pytest.fixture
def api_as() -> Callable[[Any], APIClient]:
    """An API client that authenticates like a real program: a bearer token of the user's."""

    def make(user: Any) -> APIClient:
        client = APIClient()
        if user is not None:
            _, token = services.token_create(user=user, name="test")
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return client

    return make


def force_status(obj: Center | Pool, status: str) -> Center | Pool:
    """Put an object in a state directly (test set-up only; production goes through services)."""
    type(obj).objects.filter(pk=obj.pk).update(status=status)
    obj.refresh_from_db()
    return obj


@pytest.fixture
def make_pool() -> Callable[..., Pool]:
    """A pool (and its center) of ``operator`` in ``status``."""

    def make(operator: Any, status: str = Status.DRAFT, **kwargs: Any) -> Pool:
        center = CenterFactory(operator=operator)
        pool = PoolFactory(center=center, **kwargs)
        if status != Status.DRAFT:
            force_status(
                center, status if status in (Status.ACTIVE, Status.SUBMITTED) else Status.ACTIVE
            )
            force_status(pool, status)
        return pool

    return make


@pytest.fixture
def held_deliveries(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Webhook delivery messages recorded instead of sent, for tests that attempt a delivery
    themselves (``webhooks.webhook_deliver``): the session's Celery worker
    (``tests/verification/conftest.py``) consumes the same broker, and a delivery it claimed
    first made the test's own attempt ``DeliveryBusy`` (seen in CI under load)."""
    from registry import webhooks

    held: list[tuple[Any, ...]] = []
    monkeypatch.setattr(webhooks, "enqueue_on_commit", lambda *args: held.append(args))
    return held
