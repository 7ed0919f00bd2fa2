"""Fuzzing the REST API with schemathesis against its own OpenAPI schema (RELIABILITY F1).

Every operation, as each role (anonymous, an operator, an AI firm), with a bounded number of
generated requests (hypothesis, derandomized so that CI is repeatable): no response is a server
error, every response conforms to the schema, and every GET operation reaches its 200 (random
identifiers alone never name an existing object, so half of the examples carry real ones).
``make fuzz`` runs the longer CLI campaign.
"""

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from interconnect.wsgi import application
from registry import services
from registry.models import HubLink
from tests.figures import figure
from tests.security import test_tenant_isolation as s1
from tests.security.test_tenant_isolation import World

# Examples per operation and role. Half of them carry identifiers of objects that exist (below),
# so that detail routes and ``availability/?pool=`` are fuzzed past their 404 and their 200
# bodies are checked against the schema; the test fails if a GET operation never answered 200.
MAX_EXAMPLES = 8
CHECKS = [not_a_server_error, response_schema_conformance]
ROLES = ("anonymous", "operator", "ai_firm")

# S1's objects: one of every type (a draft and an active pool, a run, a heartbeat, a downtime, a
# webhook and a delivery, a token, a change record, a held booking of an AI firm).
world = s1.world


class _RolledBack(Exception):
    """Carries a response out of a savepoint rolled back on purpose."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response


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


def known_values(w: World) -> dict[str, dict[str, list[str]]]:
    """Identifiers that exist, by collection (the path's first segment) and parameter name."""
    hub_link = HubLink.objects.first()
    assert hub_link is not None
    return {
        "accelerators": {"slug": [w.active.accelerator.slug]},
        "availability": {"pool": [w.active.national_id, w.draft.national_id]},
        "bookings": {"national_id": [w.booking.national_id]},
        "centers": {"national_id": [w.draft.center.national_id, w.active.center.national_id]},
        "changes": {"id": [w.refs["change"]]},
        "clusters": {"code": ["ZW"]},
        "downtimes": {"id": [w.refs["downtime"]]},
        "heartbeats": {"id": [w.refs["heartbeat"]]},
        "hub-links": {"id": [str(hub_link.pk)]},
        "hubs": {"code": ["BTH"]},
        "organizations": {"slug": [w.objects["organization"].slug, "acme"]},
        "pools": {"national_id": [w.active.national_id, w.draft.national_id]},
        "quotas": {"slug": [w.objects["organization"].slug]},
        "priority-grants": {"slug": [w.objects["organization"].slug]},
        "offers": {"national_id": [w.refs["offer"]]},
        "tokens": {"key_id": [w.refs["token"]]},
        "verification-runs": {"run_id": [w.refs["run"]]},
        "webhook-deliveries": {"id": [w.refs["delivery"]]},
        "webhooks": {"id": [w.refs["webhook"]]},
    }


def _collection(path: str) -> str:
    return path.removeprefix("/api/v1/").split("/")[0]


def cases(operation: Any, known: dict[str, dict[str, list[str]]]) -> st.SearchStrategy[Any]:
    """Generated cases, and as many again with existing identifiers put in."""
    base = operation.as_strategy()
    names = known.get(_collection(operation.path), {})
    choices = {
        name: st.sampled_from(values)
        for name, values in names.items()
        if name in _parameter_names(operation)
    }
    if not choices:
        return base

    def put(pair: tuple[Any, dict[str, str]]) -> Any:
        case, values = pair
        for name, value in values.items():
            if name in case.path_parameters:
                case.path_parameters = {**case.path_parameters, name: value}
            else:
                case.query = {**(case.query or {}), name: value}
        return case

    return st.one_of(base, st.tuples(base, st.fixed_dictionaries(choices)).map(put))


def _parameter_names(operation: Any) -> set[str]:
    return {p.name for p in operation.iter_parameters()}


@pytest.mark.django_db
def test_no_server_errors_and_every_response_follows_the_schema(
    api_schema: Any, world: World
) -> None:
    """Every operation as each role: no 5xx, every response as the schema says, and every GET
    operation answered 200 (with a body the schema checked) at least once."""
    users = {"anonymous": None, "operator": world.users["alice"], "ai_firm": world.users["dave"]}
    known = known_values(world)
    reached: dict[str, set[int]] = defaultdict(set)
    requests: Counter[str] = Counter()
    operations = list(api_schema.get_all_operations())

    def fuzzer(strategy: Any, label: str, role: str, headers: dict[str, str]) -> Any:
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=strategy)
        def fuzz(case: Any) -> None:
            requests[role] += 1
            # Each request in a savepoint rolled back after it, as if in its own transaction: a
            # refused value must not poison the next request, and a fuzzed DELETE must not remove
            # the objects the next requests look up.
            try:
                with transaction.atomic():
                    raise _RolledBack(case.call(headers=headers))
            except _RolledBack as answered:
                response = answered.response
            reached[label].add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=headers)

        return fuzz

    for role in ROLES:
        user = users[role]
        headers = {}
        if user is not None:
            _, token = services.token_create(user=user, name=f"fuzz-{role}")
            headers["Authorization"] = f"Bearer {token}"
        for result in operations:
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            fuzzer(cases(operation, known), label, role, headers)()
    gets = [f"GET {r.ok().path}" for r in operations if r.ok().method.upper() == "GET"]
    never_200 = sorted(g for g in gets if 200 not in reached[g])
    figure(
        "F1.rest_fuzz",
        operations=len(operations),
        examples_per_operation_and_role=MAX_EXAMPLES,
        requests=dict(requests),
        get_operations=len(gets),
        get_operations_reaching_200=len(gets) - len(never_200),
        operations_reaching_2xx=sum(
            1 for statuses in reached.values() if any(200 <= c < 300 for c in statuses)
        ),
        server_errors=0,
        schema_violations=0,
    )
    assert len(operations) > 20
    assert 200 in reached["GET /api/v1/availability/"]
    assert never_200 == [], f"GET operations that never answered 200: {never_200}"
