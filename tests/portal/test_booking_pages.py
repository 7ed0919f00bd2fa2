"""An AI firm previews a placement, books an option, watches and cancels the booking; the
operator of the pool sees the booking without the firm's workload; everyone else gets a 404."""

import html
import re
from typing import Any

import pytest
from django.utils import timezone

from brokers import services
from brokers.errors import CapacityExhausted
from brokers.models import Booking
from registry.choices import Status
from registry.models import Accelerator
from tests.portal.conftest import book

PREVIEW = (
    "/placement/?preview=1&accelerator_model=nvidia-a100-80g&count=8&gang_size=1"
    "&duration_hours=2&latency_class=training&max_centers=1&data_hub=BTH"
)


def _booking_forms(page: str) -> list[dict[str, str]]:
    """The hidden fields of every "Book this option" form on a preview page."""
    forms = []
    for form in re.findall(r'<form method="post" action="/bookings/new/">(.*?)</form>', page, re.S):
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', form))
        forms.append({k: html.unescape(v) for k, v in fields.items()})
    return forms


@pytest.mark.django_db
def test_a_firm_previews_books_and_a_resubmitted_form_books_once(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    ascend = make_pool(
        acme, Status.ACTIVE, accelerator=Accelerator.objects.get(slug="huawei-ascend-910b")
    )
    client = client_as(dave)
    page = client.get(PREVIEW)
    assert page.status_code == 200
    text = page.content.decode()
    assert pool.national_id in text
    # The pool of another model is not an option, and the page says why.
    assert 'id="rejections"' in text
    forms = _booking_forms(text)
    assert all(ascend.national_id not in f["option"] for f in forms)
    assert forms and forms[0]["option"] == f'[["{pool.national_id}", 8]]'
    response = client.post("/bookings/new/", forms[0])
    booking = Booking.objects.get()
    assert (
        response.status_code == 302 and response["Location"] == f"/bookings/{booking.national_id}/"
    )
    assert booking.door == "portal" and booking.accelerators == 8 and booking.created_by == dave
    # The same form again (a double click, a reload): still one booking, the same page.
    again = client.post("/bookings/new/", forms[0])
    assert again["Location"] == response["Location"] and Booking.objects.count() == 1
    detail = client.get(response["Location"]).content.decode()
    assert 'id="booking-status"' in detail and "Confirmed" in detail
    assert pool.national_id in detail and 'id="workload-spec"' in detail


@pytest.mark.django_db
@pytest.mark.parametrize(("persona", "expected"), [("alice", 403), ("carol", 403), ("anon", 302)])
def test_only_ai_firms_book(
    persona: str, expected: int, personas: dict[str, Any], acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    forms = _booking_forms(client_as(personas["dave"]).get(PREVIEW).content.decode())
    assert forms
    assert client_as(personas[persona]).post("/bookings/new/", forms[0]).status_code == expected
    assert not Booking.objects.exists()
    assert pool.national_id in forms[0]["option"]


@pytest.mark.django_db
def test_a_tampered_option_is_refused_by_the_service(
    dave: Any, rival: Any, make_pool: Any, client_as: Any
) -> None:
    hidden = make_pool(rival, Status.DRAFT)  # dave cannot see a draft
    make_pool(rival, Status.ACTIVE)
    client = client_as(dave)
    form = _booking_forms(client.get(PREVIEW).content.decode())[0]
    form["option"] = f'[["{hidden.national_id}", 8]]'
    response = client.post("/bookings/new/", form, follow=True)
    assert f"Unknown pool {hidden.national_id}".encode() in response.content
    assert not Booking.objects.exists()


@pytest.mark.django_db
def test_placement_form_errors_keep_the_input(dave: Any, client_as: Any) -> None:
    response = client_as(dave).get(
        "/placement/?preview=1&accelerator_model=nvidia-a100-80g&count=10&gang_size=4"
        "&duration_hours=2&latency_class=training&max_centers=1&interconnect=infiniband"
    )
    form = response.context["form"]
    assert "multiple of the gang size" in " ".join(form.errors["gang_size"])
    assert b'value="infiniband"' in response.content and b'value="10"' in response.content
    neither = client_as(dave).get(
        "/placement/?preview=1&gang_size=1&duration_hours=1&latency_class=training&max_centers=1"
    )
    assert "either an accelerator model" in " ".join(
        neither.context["form"].errors["accelerator_model"]
    )
    assert neither.context["result"] is None


@pytest.mark.django_db
def test_when_nothing_fits_every_pool_is_explained(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    make_pool(acme, Status.ACTIVE)  # 32 accelerators
    response = client_as(dave).get(PREVIEW.replace("count=8", "count=64"))
    assert b'id="no-options"' in response.content
    result = response.context["result"]
    assert not result.options and (result.rejections or result.prefiltered)


@pytest.mark.django_db
def test_cancel_gives_the_capacity_back(
    personas: dict[str, Any], acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    booking = book(personas["dave"], pool, 32, key="all")
    url = f"/bookings/{booking.national_id}/cancel/"
    # The operator of the pool sees the booking but may not cancel it; others do not see it.
    for persona in ["alice", "carol"]:
        assert client_as(personas[persona]).post(url).status_code == 404
    assert Booking.objects.get(pk=booking.pk).status == "confirmed"
    with pytest.raises(CapacityExhausted):
        book(personas["dave"], pool, 1, key="one-more")
    response = client_as(personas["dave"]).post(url, {"reason": "plans changed"})
    assert response.status_code == 302
    booking.refresh_from_db()
    assert booking.status == "cancelled" and booking.status_reason == "plans changed"
    # The capacity is free again: a new booking of the whole pool goes through.
    assert book(personas["dave"], pool, 32, key="again").status == "confirmed"
    page = client_as(personas["dave"]).get(f"/bookings/{booking.national_id}/").content
    assert b"Cancelled" in page and b'id="cancel-booking"' not in page


@pytest.mark.django_db
def test_the_operator_sees_bookings_on_its_pools_without_the_workload(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    booking = world["booking"]
    page = client_as(personas["alice"]).get(f"/bookings/{booking.national_id}/").content.decode()
    assert "Deep AI" in page and 'id="workload-spec"' not in page and "data_hub" not in page
    assert 'id="cancel-booking"' not in page
    listing = client_as(personas["alice"]).get("/bookings/").content.decode()
    assert booking.national_id in listing and "Bookings on my pools" in listing
    assert (
        booking.national_id not in client_as(personas["carol"]).get("/bookings/").content.decode()
    )


@pytest.mark.django_db
def test_live_status_endpoints(personas: dict[str, Any], world: Any, client_as: Any) -> None:
    booking = world["booking"]
    client = client_as(personas["dave"])
    data = client.get(f"/bookings/{booking.national_id}/events/").json()
    assert data["status"] == "confirmed" and not data["final"]
    assert [e["kind"] for e in data["events"]] == ["Created"]
    last = data["events"][-1]["id"]
    assert (
        client.get(f"/bookings/{booking.national_id}/events/?after={last}").json()["events"] == []
    )
    services.booking_cancel(booking=booking, actor=personas["dave"], door="api")
    data = client.get(f"/bookings/{booking.national_id}/events/?after={last}").json()
    assert data["status"] == "cancelled" and data["final"] and len(data["events"]) == 1
    statuses = client.get(f"/bookings/statuses/?ids={booking.national_id},BK-NOPE").json()
    assert statuses == {
        booking.national_id: {
            **{k: statuses[booking.national_id][k] for k in statuses[booking.national_id]},
            "status": "cancelled",
        }
    }
    # Another tenant learns nothing, not even that the booking exists.
    assert (
        client_as(personas["carol"]).get(f"/bookings/statuses/?ids={booking.national_id}").json()
        == {}
    )


@pytest.mark.django_db
def test_bookings_list_shows_accelerator_hours_used(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    booking = world["booking"]
    allocation = booking.allocations.get()
    start = timezone.now()
    services.usage_record(
        allocation=allocation, started_at=start, finished_at=start + timezone.timedelta(hours=3)
    )
    page = client_as(personas["dave"]).get("/bookings/")
    assert page.context["usage"][0]["accelerator_hours"] == 24
    assert b'<td class="num">24.00</td>' in page.content
    assert booking.national_id.encode() in page.content
    assert f'data-live-list="{booking.national_id}"'.encode() in page.content


@pytest.mark.django_db
def test_the_capacity_search_shows_what_is_free_in_the_window(
    personas: dict[str, Any], world: Any, client_as: Any
) -> None:
    booking, pool = world["booking"], world["own_active"]
    client = client_as(personas["dave"])
    before = (booking.window_start - timezone.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M")
    earlier = client.get(f"/capacity/?status=active&start={before}&hours=1").context["page"]
    assert {p.national_id: p.free for p in earlier}[pool.national_id] == 32
    start = booking.window_start.strftime("%Y-%m-%dT%H:%M")
    later = client.get(f"/capacity/?status=active&start={start}&hours=1").context["page"]
    assert {p.national_id: p.free for p in later}[pool.national_id] == 24
