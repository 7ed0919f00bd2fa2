"""Role x object x method: who may read and change which center or pool, through the REST API.

The matrix is checked against the router, so a new endpoint cannot be added without a row here.
A foreign object is always a 404 (its existence does not leak); a refused write leaves the object
unchanged and writes no change record.
"""

from typing import Any

import pytest

from registry.api.urls import router
from registry.choices import Status
from registry.models import Center, ChangeRecord, Pool
from tests.conftest import force_status
from tests.factories import CenterFactory, PoolFactory

PERSONAS = ["anon", "alice", "bob", "carol", "dave", "pat"]

# Objects: "own" belongs to acme (alice, bob); "foreign" to rival (carol).
# expected[(object, method)] = {persona: status}
READ_DRAFT_OWN = {"anon": 404, "alice": 200, "bob": 200, "carol": 404, "dave": 404, "pat": 200}
READ_ACTIVE_OTHER = dict.fromkeys(PERSONAS, 200)
PATCH_DRAFT_OWN = {"anon": 401, "alice": 200, "bob": 200, "carol": 404, "dave": 403, "pat": 200}
PATCH_ACTIVE_OTHER = {"anon": 401, "alice": 404, "bob": 404, "carol": 200, "dave": 403, "pat": 200}
DELETE_DRAFT_OWN = {"anon": 401, "alice": 204, "bob": 403, "carol": 404, "dave": 403, "pat": 204}
# A member is refused by the service (only admins delete) once the object is found; another
# operator's object is a 404 for them as for their admin.
DELETE_ACTIVE_OTHER = {"anon": 401, "alice": 404, "bob": 404, "carol": 400, "dave": 403, "pat": 400}
SUBMIT_DRAFT_OWN = {"anon": 401, "alice": 200, "bob": 200, "carol": 404, "dave": 403, "pat": 200}
SUBMIT_ACTIVE_OTHER = {"anon": 401, "alice": 404, "bob": 404, "carol": 400, "dave": 403, "pat": 400}
RETIRE_DRAFT_OWN = SUBMIT_DRAFT_OWN
RETIRE_ACTIVE_OTHER = {"anon": 401, "alice": 404, "bob": 404, "carol": 200, "dave": 403, "pat": 200}

CASES = [
    ("own_draft", "get", READ_DRAFT_OWN),
    ("other_active", "get", READ_ACTIVE_OTHER),
    ("own_draft", "patch", PATCH_DRAFT_OWN),
    ("other_active", "patch", PATCH_ACTIVE_OTHER),
    ("own_draft", "delete", DELETE_DRAFT_OWN),
    ("other_active", "delete", DELETE_ACTIVE_OTHER),
    ("own_draft", "submit", SUBMIT_DRAFT_OWN),
    ("other_active", "submit", SUBMIT_ACTIVE_OTHER),
    ("own_draft", "retire", RETIRE_DRAFT_OWN),
    ("other_active", "retire", RETIRE_ACTIVE_OTHER),
]

# Endpoints with per-object tenancy are covered by the matrix below; the others say why not.
COVERED_ELSEWHERE = {
    "hub": "public, read-only",
    "cluster": "public, read-only",
    "hublink": "public, read-only",
    "accelerator": "public, read-only",
    "organization": "own organization only: test_tenancy_lists",
    "change": "own objects only: test_tenancy_lists",
    "token": "own tokens only: test_tokens",
    "webhook": "own organization's admins only: tests/ops/test_webhooks.py",
    "webhookdelivery": "own organization's admins only: tests/ops/test_webhooks.py",
}
MATRIX_RESOURCES = {"center", "pool"}


def test_every_router_endpoint_is_in_the_matrix_or_explained() -> None:
    basenames = {basename for _, _, basename in router.registry}
    assert basenames == MATRIX_RESOURCES | set(COVERED_ELSEWHERE)


def _objects(resource: str, acme: Any, rival: Any) -> dict[str, Center | Pool]:
    if resource == "center":
        own = CenterFactory(operator=acme)
        other = force_status(CenterFactory(operator=rival), Status.ACTIVE)
    else:
        own = PoolFactory(center=CenterFactory(operator=acme))
        other_center = force_status(CenterFactory(operator=rival), Status.ACTIVE)
        other = force_status(PoolFactory(center=other_center), Status.ACTIVE)
    return {"own_draft": own, "other_active": other}


def _call(client: Any, resource: str, obj: Center | Pool, method: str) -> Any:
    url = f"/api/v1/{resource}s/{obj.national_id}/"
    if method == "get":
        return client.get(url)
    if method == "patch":
        return client.patch(url, {"name": f"renamed {obj.pk}"}, format="json")
    if method == "delete":
        return client.delete(url)
    if method == "submit":
        return client.post(url + "submit/")
    if method == "retire":
        return client.post(url + "transition/", {"to": "retired", "reason": "test"}, format="json")
    raise AssertionError(method)


@pytest.mark.django_db
@pytest.mark.parametrize("resource", sorted(MATRIX_RESOURCES))
@pytest.mark.parametrize(
    ("target", "method", "expected"), CASES, ids=[f"{t}-{m}" for t, m, _ in CASES]
)
def test_permission_matrix(
    resource: str,
    target: str,
    method: str,
    expected: dict[str, int],
    personas: dict[str, Any],
    acme: Any,
    rival: Any,
    api_as: Any,
) -> None:
    tried = 0
    for persona in PERSONAS:
        objs = _objects(resource, acme, rival)
        obj = objs[target]
        before = (
            type(obj).objects.filter(pk=obj.pk).values().first(),
            ChangeRecord.objects.count(),
        )
        response = _call(api_as(personas[persona]), resource, obj, method)
        tried += 1
        assert response.status_code == expected[persona], (
            persona,
            response.status_code,
            getattr(response, "data", None),
        )
        if response.status_code >= 400:
            # Refused: nothing changed, nothing logged.
            after = (
                type(obj).objects.filter(pk=obj.pk).values().first(),
                ChangeRecord.objects.count(),
            )
            assert after == before
        elif method != "get":
            record = ChangeRecord.objects.order_by("-id").first()
            assert record is not None and record.door == "api"
            assert record.actor == personas[persona]
    assert tried == len(PERSONAS)
