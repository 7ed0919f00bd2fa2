"""Pages a person reads: evidence as sentences and tables (the JSON one click away), the
workload with human labels, the live Workload column, plural forms, the favicon, and the
portal's door of "one mistake, one message" (unknown names, limits)."""

import copy
import datetime as dt
import re
from typing import Any

import pytest

from brokers import limits, services
from brokers.models import Allocation
from registry.choices import Status
from tests.brokers.conftest import next_hour, spec

pytestmark = pytest.mark.django_db

PREVIEW = (
    "/placement/?preview=1&accelerator_model=nvidia-a100-80g&count=8&gang_size=1"
    "&duration_hours=2&latency_class=training&max_centers=1"
)


EVIDENCE: dict[str, Any] = dict(
    freivalds=[{"passed": True, "worst_ratio": 9e-06}, {"passed": True, "worst_ratio": 0.25}],
    devices=[{"device": 0, "node": 0, "seconds": 1.5, "tflops": 300.0, "worst_ratio": 9e-06}],
    inventory_match={
        "agent_id": "agent-zw-1",
        "agent_version": "0.2.0",
        "simulated": True,
        "declared": {
            "accelerator_model": "nvidia-a100-80g",
            "accelerators_per_node": 8,
            "nodes": 4,
        },
        "reported": {
            "pool_key": "a100",
            "accelerator_model": "nvidia-a100-80g",
            "accelerators_per_node": 8,
            "nodes": 4,
            "device_details": ["NVIDIA A100-SXM4-80GB (simulated)"] * 2,
        },
        "mismatches": [],
    },
)


def test_the_evidence_page_reads_as_sentences_and_tables(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    from verification.models import VerificationRun

    pool = make_pool(acme, Status.ACTIVE)
    run = VerificationRun.objects.create(
        pool=pool,
        trigger="submitted",
        state="passed",
        verdict_reason="verified",
        **copy.deepcopy(EVIDENCE),
    )
    page = client_as(alice).get(f"/runs/{run.run_id}/").content.decode()
    for python_text in ("{'", "'passed'", "True", "[]", "SIMULATED", "9e-06"):
        assert python_text not in page, python_text
    assert "The agent's inventory matches the declaration." in page
    assert "simulated</strong> center" in page and "0.000009" in page and "on 1 device " in page
    assert re.search(r"<td>Nodes</td><td>4</td><td>4</td>", page)
    assert f'href="/api/v1/verification-runs/{run.run_id}/"' in page
    raw = client_as(alice).get(f"/api/v1/verification-runs/{run.run_id}/").json()
    assert raw["inventory_match"]["simulated"] is True
    # A mismatch is said as a sentence.
    run.inventory_match["mismatches"] = ["nodes: declared 4, agent reports 2"]
    run.inventory_match["reported"]["nodes"] = 2
    run.save()
    page = client_as(alice).get(f"/runs/{run.run_id}/").content.decode()
    assert "does <strong>not</strong> match the declaration: nodes: declared 4, agent" in page


def test_the_booking_page_reads_and_its_live_column_follows_the_workload(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    make_pool(acme, Status.ACTIVE)
    start = next_hour() + dt.timedelta(days=1)
    booking = services.booking_create(
        spec=spec(
            count=8,
            earliest_start=start,
            duration=dt.timedelta(hours=4),
            data_hub="BTH",
            data_gb=100.0,
        ),
        idempotency_key="page",
        actor=dave,
        door="api",
    )
    client = client_as(dave)
    page = client.get(f"/bookings/{booking.national_id}/").content.decode()
    panel = page.split('id="workload-spec"')[1].split("</div>")[0]
    assert "<dt>Accelerator model</dt><dd>nvidia-a100-80g</dd>" in panel
    assert f"<dt>Earliest start</dt><dd>{start:%Y-%m-%d %H:%M} UTC</dd>" in panel
    assert (
        "<dt>Duration</dt><dd>4 h</dd>" in panel and "<dt>Data size (GB)</dt><dd>100</dd>" in panel
    )
    assert "accelerator_model" not in panel and "T" + f"{start:%H:%M}" not in panel
    assert f'href="/api/v1/bookings/{booking.national_id}/"' in panel
    assert '<link rel="icon"' in page
    # What the page polls carries the Workload column: it follows "succeeded".
    Allocation.objects.filter(booking=booking).update(
        workload_state="succeeded", workload_id=booking.national_id
    )
    data = client.get(f"/bookings/{booking.national_id}/events/").json()
    assert [(a["workload_state"], a["workload_id"]) for a in data["allocations"]] == [
        ("succeeded", booking.national_id)
    ]
    assert "[data-workload]" in page  # the script updates that cell


def test_plural_forms(dave: Any, acme: Any, make_pool: Any, client_as: Any) -> None:
    make_pool(acme, Status.ACTIVE)
    page = client_as(dave).get(PREVIEW).content.decode()
    assert "1 candidate pool considered." in page and "pools considered" not in page
    assert "8 accelerators ·" in page


def test_the_placement_form_says_what_every_door_says(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    make_pool(acme, Status.ACTIVE)
    client = client_as(dave)
    form = client.get(PREVIEW + "&interconnect=infinibnd&traits=rdmaa").context["form"]
    assert form.errors["interconnect"] == [
        'Unknown interconnect "infinibnd". Did you mean infiniband?'
    ]
    assert form.errors["traits"][0].startswith('Unknown trait "rdmaa". Did you mean rdma')
    form = client.get(PREVIEW.replace("duration_hours=2", "duration_hours=0")).context["form"]
    assert form.errors["duration_hours"] == [limits.DURATION_MESSAGE]
    form = client.get(PREVIEW.replace("count=8", "count=0")).context["form"]
    assert form.errors["count"] == [limits.COUNT_MESSAGE]


def test_a_403_is_logged_once_without_its_traceback(dave: Any, client_as: Any, caplog: Any) -> None:
    import logging

    # Django's own console handler is gone: the root logger prints django.* lines once.
    assert logging.getLogger("django").handlers == []
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client_as(dave).get("/centers/new/").status_code == 403
    records = [r for r in caplog.records if r.name == "django.request"]
    assert len(records) == 1 and records[0].exc_info is None
    assert "Forbidden" in records[0].getMessage()


def test_the_start_up_banner_shows_every_port(settings: Any, tmp_path: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    settings.VAR_DIR = tmp_path
    out = StringIO()
    call_command(
        "demo_banner", port="8090", broker_port="50151", telemetry_port="50152", stdout=out
    )
    text = out.getvalue()
    assert "127.0.0.1:8090/" in text and "127.0.0.1:50151" in text
    assert "telemetry  127.0.0.1:50152" in text


def test_the_portal_refuses_a_reused_key_with_the_same_sentence(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    import json

    from brokers.models import Booking
    from tests.portal.test_booking_pages import _booking_forms

    pool = make_pool(acme, Status.ACTIVE)
    client = client_as(dave)
    form = _booking_forms(client.get(PREVIEW).content.decode())[0]
    first = client.post("/bookings/new/", form)
    booking = Booking.objects.get()
    assert first["Location"] == f"/bookings/{booking.national_id}/"
    # The same key with another request (16 accelerators): refused, nothing booked.
    other = {
        **form,
        "spec": json.dumps({**json.loads(form["spec"]), "count": 16}),
        "option": json.dumps([[pool.national_id, 16]]),
    }
    page = client.post("/bookings/new/", other, follow=True).content.decode()
    assert f"was already used for another request (booking {booking.national_id})" in page
    assert Booking.objects.count() == 1
