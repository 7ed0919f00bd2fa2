"""The pool page draws measured throughput run after run, for whoever may see the pool, with the
declared figure and the drift floor; the declared precision and its catalog peak sit next to the
declared figure; the pool form takes the precision with the API's message for a bad one; the run
page lists every device challenged."""

import datetime as dt
import html
import re
from typing import Any

import pytest
from django.utils import timezone

from registry.choices import Status
from registry.models import Accelerator, Pool
from tests.factories import CenterFactory
from tests.payloads import pool_body
from verification.models import VerificationRun

DRIFT = "drift: measured 250.0 TFLOPS per accelerator, 19% below its record of 310.0"


def _runs(pool: Any, *rows: tuple[str, float | None, str]) -> list[VerificationRun]:
    """Finished runs of ``pool``, one a day, oldest first: (state, measured, verdict reason)."""
    start = timezone.now() - dt.timedelta(days=len(rows))
    return [
        VerificationRun.objects.create(
            pool=pool,
            trigger="scheduled",
            state=state,
            measured_tflops_per_accelerator=measured,
            declared_tflops_per_accelerator=pool.declared_tflops_per_accelerator,
            verdict_reason=reason,
            finished_at=start + dt.timedelta(days=i),
        )
        for i, (state, measured, reason) in enumerate(rows)
    ]


def _marks(body: str) -> list[str]:
    """The kinds of the trend chart's marks, in drawing order."""
    return re.findall(r'<g class="trend-point" data-kind="(\w+)">', body)


@pytest.mark.django_db
def test_the_trend_draws_one_mark_per_finished_run_and_leaves_open_ones_out(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    _runs(
        pool,
        ("passed", 300.0, "verified"),
        ("failed", 120.0, "throughput: 120.0 TFLOPS is below 80% of 312"),
        ("passed", 305.0, "verified"),
        ("failed", None, "wrong product: step 3 of device 0"),
        ("error", None, "agent unreachable: health check: UNAVAILABLE"),
        ("passed", 310.0, "verified"),
    )
    VerificationRun.objects.create(pool=pool, trigger="operator_request", state="queued")

    body = client_as(alice).get(f"/pools/{pool.national_id}/").content.decode()

    assert _marks(body) == ["passed", "failed", "passed", "failed", "passed"]
    chart = body[body.index('<svg viewBox="0 0 560 200"') :]
    chart = chart[: chart.index("</svg>")]
    assert 'class="trend-declared"' in chart and "declared 312.0 TFLOPS" in chart
    # The floor appears once the pool has a record: from the second run on.
    assert chart.count(" H") == 4
    assert 'aria-label="Measured TFLOPS per accelerator over the last 5 verification runs: ' in body
    # The fallback table has a row per mark, and links to the evidence for the operator.
    table = body[body.index('id="trend-table"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr data-kind=") == 5
    assert table.count('href="/runs/') == 5


@pytest.mark.django_db
def test_the_floor_is_the_drift_threshold_below_the_record_and_a_drift_pass_is_marked(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    _runs(pool, ("passed", 300.0, "verified"), ("passed", 310.0, "verified"))
    _runs(pool, ("passed", 250.0, DRIFT))

    response = client_as(alice).get(f"/pools/{pool.national_id}/")
    body = response.content.decode()

    assert _marks(body) == ["passed", "passed", "drift"]
    floors = [p["floor"] for p in response.context["trend_points"]]
    assert floors == [None, pytest.approx(255.0), pytest.approx(263.5)]
    # The next run is held to the best of the last passes (310), drift included in the history.
    assert '<strong id="drift-next-floor">263.5</strong>' in body


@pytest.mark.django_db
def test_a_drifted_pool_shows_its_degraded_reason_to_a_firm(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    _runs(pool, ("passed", 310.0, "verified"), ("passed", 250.0, DRIFT))
    Pool.objects.filter(pk=pool.pk).update(status=Status.DEGRADED, status_reason=DRIFT)

    body = client_as(dave).get(f"/pools/{pool.national_id}/").content.decode()

    status = body[body.index('<span id="pool-status">') :]
    assert status.startswith(
        '<span id="pool-status"><span class="badge orange" data-status="degraded"'
    )
    assert f'<p class="muted">{DRIFT}</p>' in body
    assert _marks(body) == ["passed", "drift"]


@pytest.mark.django_db
def test_a_firm_sees_the_trend_of_a_listed_pool_but_not_its_evidence(
    dave: Any, carol: Any, rival: Any, make_pool: Any, client_as: Any
) -> None:
    listed = make_pool(rival, Status.ACTIVE)
    runs = _runs(listed, ("passed", 300.0, "verified"), ("failed", 100.0, "throughput: low"))
    unlisted = make_pool(rival, Status.FAILED)
    _runs(unlisted, ("failed", 90.0, "throughput: low"))
    firm = client_as(dave)

    body = firm.get(f"/pools/{listed.national_id}/").content.decode()
    assert _marks(body) == ["passed", "failed"]
    # The figures, but no way into the evidence (run pages are the operator's: 404).
    assert 'href="/runs/' not in body and 'id="runs"' not in body
    assert firm.get(f"/runs/{runs[0].run_id}/").status_code == 404

    assert firm.get(f"/pools/{unlisted.national_id}/").status_code == 404
    # Its operator sees both.
    assert _marks(client_as(carol).get(f"/pools/{unlisted.national_id}/").content.decode()) == [
        "failed"
    ]


@pytest.mark.django_db
def test_a_pool_without_finished_runs_says_so(
    alice: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.DRAFT)
    body = client_as(alice).get(f"/pools/{pool.national_id}/").content.decode()
    assert "No finished verification yet." in body and "trend-point" not in body


@pytest.mark.django_db
def test_the_pool_page_shows_the_declared_precision_and_its_catalog_peak(
    dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    bf16 = make_pool(acme, Status.ACTIVE)
    fp64 = make_pool(
        acme, Status.ACTIVE, declared_precision="fp64", declared_tflops_per_accelerator=9
    )
    peak = Accelerator.objects.get(slug="nvidia-a100-80g").bf16_dense_tflops
    firm = client_as(dave)

    body = firm.get(f"/pools/{bf16.national_id}/").content.decode()
    assert 'data-precision="bf16">BF16 inputs, FP32 accumulation (tensor cores)</strong>' in body
    assert re.search(rf'id="catalog-peak">{peak:.1f} TFLOPS per accelerator in BF16', body)

    body = firm.get(f"/pools/{fp64.national_id}/").content.decode()
    assert 'data-precision="fp64">FP64</strong>' in body
    assert 'id="catalog-peak">not catalogued for FP64' in body


def _pool_form(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "H100 pool",
        "accelerator": Accelerator.objects.get(slug="nvidia-h100-sxm").pk,
        "accelerators_per_node": "8",
        "nodes": "4",
        "price_per_accelerator_hour": "12.50",
        "currency": "CNY",
        "declared_tflops_per_accelerator": "51.2",
        **overrides,
    }


@pytest.mark.django_db
def test_the_pool_form_asks_for_the_precision_next_to_the_figure(
    alice: Any, acme: Any, client_as: Any
) -> None:
    center = CenterFactory(operator=acme)
    url = f"/centers/{center.national_id}/pools/new/"
    client = client_as(alice)

    form = client.get(url).content.decode()
    assert '<label for="id_declared_precision">Precision of the declared TFLOPS:</label>' in form
    assert "The arithmetic your TFLOPS figure is about." in form
    # Right after the figure it qualifies.
    assert form.index('id="id_declared_tflops_per_accelerator"') < form.index(
        'id="id_declared_precision"'
    )

    assert client.post(url, _pool_form(declared_precision="fp32")).status_code == 302
    assert Pool.objects.get(center=center).declared_precision == "fp32"
    # Omitted (a script posting the form) means the model's default, as through the API.
    assert client.post(url, _pool_form(name="second")).status_code == 302
    assert Pool.objects.get(center=center, name="second").declared_precision == "bf16"


@pytest.mark.django_db
def test_a_bad_precision_gets_the_same_message_in_the_portal_and_the_api(
    alice: Any, acme: Any, client_as: Any, api_as: Any
) -> None:
    center = CenterFactory(operator=acme)

    response = client_as(alice).post(
        f"/centers/{center.national_id}/pools/new/", _pool_form(declared_precision="fp8")
    )
    assert response.status_code == 200
    portal = response.context["form"].errors["declared_precision"]
    page = html.unescape(response.content.decode())
    assert 'value="H100 pool"' in page

    api = api_as(alice).post(
        "/api/v1/pools/", pool_body(center.national_id, declared_precision="fp8"), format="json"
    )
    assert api.status_code == 400
    assert list(portal) == [str(m) for m in api.data["declared_precision"]]
    assert portal == ['"fp8" is not a valid choice.'] and portal[0] in page
    assert not Pool.objects.filter(center=center).exists()


@pytest.mark.django_db
def test_the_run_page_lists_every_device_challenged(
    alice: Any, dave: Any, acme: Any, make_pool: Any, client_as: Any
) -> None:
    pool = make_pool(acme, Status.ACTIVE)
    devices = [
        {
            "device": i,
            "node": f"node-{i // 2}",
            "seconds": 1.25 + i,
            "tflops": 300.0 - i,
            "steps_opened": 3,
            "worst_ratio": 0.01,
            "description": f"NVIDIA A100-SXM4-80GB #{i}",
        }
        for i in range(4)
    ]
    (run,) = _runs(pool, ("passed", 297.0, "verified"))
    VerificationRun.objects.filter(pk=run.pk).update(
        devices=devices, sample={"nodes": ["node-0", "node-1"], "of_nodes": 4}, dtype="bf16"
    )

    body = client_as(alice).get(f"/runs/{run.run_id}/").content.decode()
    table = body[body.index('<table id="devices">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr><td>") == 4
    for d in devices:
        assert d["description"] in table and f"<td>{d['node']}</td>" in table
    assert "nodes node-0, node-1 of 4" in body
    assert client_as(dave).get(f"/runs/{run.run_id}/").status_code == 404
