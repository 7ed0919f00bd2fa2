"""Who may see which portal page: every page x every persona, table-driven.

A foreign object's page is a 404 (its existence does not leak); a page that a role may not use
at all is a 403; an anonymous visitor to a signed-in page is sent to sign in. The table is checked
against the portal's URLconf, so a new page cannot be added without a row here.
"""

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from registry.choices import Status

PERSONAS = ["anon", "alice", "bob", "carol", "dave", "pat"]
ALL_200 = dict.fromkeys(PERSONAS, 200)
SIGNED_IN = {"anon": 302, **dict.fromkeys(PERSONAS[1:], 200)}
OPERATORS = {"anon": 302, "alice": 200, "bob": 200, "carol": 200, "dave": 403, "pat": 200}
OWN_DRAFT = {"anon": 404, "alice": 200, "bob": 200, "carol": 404, "dave": 404, "pat": 200}
# Verification evidence is the operator's: other tenants get a 404 even for a listed pool.
OWN_EVIDENCE = {"anon": 302, "alice": 200, "bob": 200, "carol": 404, "dave": 404, "pat": 200}
# A booking: its firm (dave), the operator of its pool (acme) and the platform.
BOOKING = {"anon": 302, "alice": 200, "bob": 200, "carol": 404, "dave": 200, "pat": 200}
NOT_FOUND = {"anon": 302, **dict.fromkeys(PERSONAS[1:], 404)}
OWN_DRAFT_WRITE = {"anon": 302, "alice": 200, "bob": 200, "carol": 404, "dave": 403, "pat": 200}


def center_of(key: str) -> Any:
    return lambda w: w[key].center.national_id


def pool_of(key: str) -> Any:
    return lambda w: w[key].national_id


# (url name, how to build its url from the world, expected status per persona)
PAGES: list[tuple[str, Any, dict[str, int]]] = [
    ("dashboard", lambda w: "/", ALL_200),
    ("capacity-search", lambda w: "/capacity/", ALL_200),
    ("center-list", lambda w: "/centers/", ALL_200),
    ("center-register", lambda w: "/centers/new/", OPERATORS),
    ("center-detail", lambda w: f"/centers/{center_of('own_draft')(w)}/", OWN_DRAFT),
    ("center-detail", lambda w: f"/centers/{center_of('foreign_active')(w)}/", ALL_200),
    ("pool-create", lambda w: f"/centers/{center_of('own_draft')(w)}/pools/new/", OWN_DRAFT_WRITE),
    ("pool-list", lambda w: "/pools/", OPERATORS),
    ("pool-detail", lambda w: f"/pools/{pool_of('own_draft')(w)}/", OWN_DRAFT),
    ("pool-detail", lambda w: f"/pools/{pool_of('foreign_active')(w)}/", ALL_200),
    ("pool-status", lambda w: f"/pools/{pool_of('own_draft')(w)}/status/", OWN_DRAFT),
    ("pool-status", lambda w: f"/pools/{pool_of('foreign_active')(w)}/status/", ALL_200),
    ("run-detail", lambda w: f"/runs/{w['own_run'].run_id}/", OWN_EVIDENCE),
    ("run-detail", lambda w: "/runs/not-a-uuid/", NOT_FOUND),
    ("placement", lambda w: "/placement/", SIGNED_IN),
    (
        "placement",
        lambda w: (
            "/placement/?preview=1&accelerator_model=nvidia-a100-80g&count=8"
            "&gang_size=1&duration_hours=1&latency_class=training&max_centers=1"
        ),
        SIGNED_IN,
    ),
    ("booking-list", lambda w: "/bookings/", SIGNED_IN),
    ("booking-detail", lambda w: f"/bookings/{w['booking'].national_id}/", BOOKING),
    ("booking-events", lambda w: f"/bookings/{w['booking'].national_id}/events/", BOOKING),
    (
        "booking-statuses",
        lambda w: f"/bookings/statuses/?ids={w['booking'].national_id}",
        SIGNED_IN,
    ),
    ("offer-list", lambda w: "/offers/", SIGNED_IN),
    ("change-list", lambda w: "/changes/", SIGNED_IN),
    ("organization", lambda w: "/organization/", SIGNED_IN),
    ("token-list", lambda w: "/tokens/", SIGNED_IN),
    ("password-change", lambda w: "/password/", SIGNED_IN),
    ("login", lambda w: "/login/", ALL_200),
]
# POST-only actions, covered by test_page_actions.py; outside the portal: its own tests.
COVERED_ELSEWHERE = {
    "pool-submit": "test_page_actions",
    "pool-transition": "test_page_actions",
    "token-revoke": "test_page_actions",
    "pool-reverify": "test_page_actions",
    "booking-create": "test_booking_pages",
    "booking-cancel": "test_booking_pages",
    "downtime-declare": "test_page_actions",
    "center-downtime-declare": "test_page_actions",
    "logout": "POST only, Django's view",
    # The market's portal forms (POST only): their services are tested at REST, gRPC and the CLI
    # (tests/brokers/test_market_doors.py); the portal forms themselves have no test yet.
    "booking-offer": "POST only; services in test_market_doors",
    "offer-buy": "POST only; services in test_market_doors",
    "offer-withdraw": "POST only; services in test_market_doors",
    "healthz": "interconnect health tests",
    "readyz": "interconnect health tests",
    "metrics": "interconnect health tests",
}


def _portal_names() -> set[str]:
    names: set[str] = set()

    def walk(patterns: list[Any]) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                if p.namespace is None and not str(p.pattern).startswith(("api", "admin")):
                    walk(p.url_patterns)
            elif isinstance(p, URLPattern) and p.name and not str(p.pattern).startswith("api"):
                names.add(p.name)

    walk(get_resolver().url_patterns)
    return names


def test_every_portal_page_is_in_the_table_or_explained() -> None:
    covered = {name for name, _, _ in PAGES} | set(COVERED_ELSEWHERE)
    missing = _portal_names() - covered
    assert not missing, f"portal pages without an access row: {sorted(missing)}"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "url", "expected"), PAGES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(PAGES)]
)
def test_page_access(
    name: str,
    url: Any,
    expected: dict[str, int],
    personas: dict[str, Any],
    world: Any,
    client_as: Any,
) -> None:
    path = url(world)
    for persona in PERSONAS:
        response = client_as(personas[persona]).get(path)
        assert response.status_code == expected[persona], (persona, path, response.status_code)
        if response.status_code == 302:
            assert response["Location"].startswith("/login/?next=")


@pytest.mark.django_db
def test_lists_never_show_another_tenants_drafts(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    own_draft, foreign_draft = world["own_draft"].national_id, world["foreign_draft"].national_id
    for persona, sees_own in [("alice", True), ("carol", False), ("dave", False), ("anon", False)]:
        client = client_as(personas[persona])
        for url in ["/capacity/?status=", "/centers/?mine=0", "/pools/", "/changes/"]:
            body = client.get(url).content.decode()
            assert foreign_draft not in body or persona == "carol", (persona, url)
            if not sees_own:
                assert own_draft not in body, (persona, url)
    # The owner finds its draft among its own pools and in its change log.
    alice = client_as(personas["alice"])
    assert own_draft in alice.get("/pools/").content.decode()
    assert foreign_draft not in alice.get("/pools/").content.decode()


@pytest.mark.django_db
def test_a_listed_pool_page_hides_the_owners_details_from_others(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    pool = world["own_active"]
    center_url = f"/centers/{pool.center.national_id}/"
    for persona in ["anon", "carol", "dave"]:
        body = client_as(personas[persona]).get(center_url).content.decode()
        assert pool.center.agent_endpoint not in body
        assert 'class="changes"' not in body
        pool_body = client_as(personas[persona]).get(f"/pools/{pool.national_id}/").content.decode()
        assert "Submit for verification" not in pool_body
        assert 'class="changes"' not in pool_body
    owner = client_as(personas["alice"]).get(center_url).content.decode()
    assert pool.center.agent_endpoint in owner and 'class="changes"' in owner


@pytest.mark.django_db
def test_search_defaults_to_verified_capacity(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    body = client_as(personas["dave"]).get("/capacity/").content.decode()
    assert world["own_active"].national_id in body
    assert world["foreign_active"].national_id in body
    assert 'data-status="draft"' not in body
    # Filters narrow: an accelerator nobody declared finds nothing.
    body = client_as(personas["dave"]).get("/capacity/?accelerator=huawei-ascend-910b").content
    assert b"No pool matches" in body


@pytest.mark.django_db
def test_long_lists_are_paginated(
    personas: dict[str, Any], acme: Any, make_pool: Any, client_as: Any
) -> None:
    for _ in range(27):
        make_pool(acme, Status.ACTIVE)
    client = client_as(personas["alice"])
    first = client.get("/pools/")
    assert first.context["page"].paginator.num_pages == 2
    assert len(first.context["page"].object_list) == 25
    second = client.get("/pools/?page=2")
    assert len(second.context["page"].object_list) == 2
    assert b"Page 2 of 2" in second.content
