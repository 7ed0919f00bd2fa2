"""The broker's REST endpoints under schemathesis: no server error, every response as
documented, as an AI firm and as an operator (RELIABILITY F1, for this app's operations)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from interconnect.wsgi import application
from registry import services

BROKER_PATHS = (
    "/api/v1/capacity/",
    "/api/v1/placements/",
    "/api/v1/bookings/",
    "/api/v1/usage/",
    "/api/v1/quotas/",
)


@pytest.fixture
def api_schema(db: Any) -> Iterator[Any]:
    # In-process requests must not close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["ai_firm", "operator"])
def test_broker_endpoints_survive_fuzzing(
    role: str, api_schema: Any, alice: Any, dave: Any, acme: Any, active_pool: Any
) -> None:
    from brokers import services as broker_services
    from tests.brokers.conftest import spec

    active_pool(acme, size=8)
    broker_services.booking_create(spec=spec(), idempotency_key="seed", actor=dave, door="api")
    user = {"ai_firm": dave, "operator": alice}[role]
    headers = {"Authorization": f"Bearer {services.token_create(user=user, name='fuzz')[1]}"}
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(BROKER_PATHS):
            continue
        operations += 1

        @settings(
            max_examples=8,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            case.call_and_validate(
                headers=headers, checks=[not_a_server_error, response_schema_conformance]
            )

        fuzz()
    assert operations >= 8
