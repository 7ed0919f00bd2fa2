"""Fuzzing the REST API with schemathesis against its own OpenAPI schema (RELIABILITY F1).

Every operation, as each role (anonymous, an operator, an AI firm), with a bounded number of
generated requests (hypothesis, derandomized so that CI is repeatable): no response is a server
error, and every response conforms to the schema. ``make fuzz`` runs the longer CLI campaign.
"""

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from interconnect.wsgi import application
from registry import services
from registry.choices import Status

MAX_EXAMPLES = 6
CHECKS = [not_a_server_error, response_schema_conformance]


@pytest.fixture
def api_schema(db: Any) -> Iterator[Any]:
    # Like Django's test client: in-process requests must not close the test's connection.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["anonymous", "operator", "ai_firm"])
def test_no_server_errors_and_every_response_follows_the_schema(
    role: str, api_schema: Any, alice: Any, dave: Any, acme: Any, make_pool: Any
) -> None:
    # Real objects, so that generated lookups can also hit existing rows.
    make_pool(acme, Status.ACTIVE)
    make_pool(acme)
    user = {"anonymous": None, "operator": alice, "ai_firm": dave}[role]
    headers = {}
    if user is not None:
        headers["Authorization"] = f"Bearer {services.token_create(user=user, name='fuzz')[1]}"
    calls = {"n": 0}
    operations = 0
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            calls["n"] += 1
            # Each request in its own savepoint, as it would have its own transaction outside
            # the test: a refused value must not poison the next request.
            with transaction.atomic():
                case.call_and_validate(headers=headers, checks=CHECKS)

        fuzz()
    print(f"\nREST fuzz as {role}: {operations} operations, {calls['n']} requests, 0 failures")
    assert operations > 20 and calls["n"] >= operations
