"""List pages cost the same number of queries whatever the number of rows (no N+1): each is
loaded with one row, then with six, and the counts must match."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry.choices import Status
from tests.portal.conftest import book

# (url, persona) of every list page.
LISTS = [
    ("/capacity/", "dave"),
    ("/capacity/?start=2030-01-01T00:00&hours=2", "dave"),
    ("/centers/", "alice"),
    ("/centers/?mine=0", None),
    ("/pools/", "alice"),
    ("/changes/", "alice"),
    ("/bookings/", "dave"),
    ("/bookings/", "alice"),
]


def _queries(client: Any, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        assert client.get(url).status_code == 200
    return len(ctx)


@pytest.mark.django_db
@pytest.mark.parametrize(("url", "persona"), LISTS)
def test_list_pages_have_no_n_plus_one(
    url: str,
    persona: str | None,
    personas: dict[str, Any],
    acme: Any,
    make_pool: Any,
    client_as: Any,
) -> None:
    client = client_as(personas[persona] if persona else None)

    def add(i: int) -> None:
        pool = make_pool(acme, Status.ACTIVE)
        book(personas["dave"], pool, 8, key=f"q{i}")

    add(0)
    client.get(url)  # warm the session and the catalog caches
    one = _queries(client, url)
    for i in range(1, 6):
        add(i)
    assert _queries(client, url) == one, url
