"""End to end in a real browser: Debian's chromium driven by Playwright against a live server.

An operator signs in and registers a center and a pool through the forms and submits it; a real
Celery worker verifies it against a simulated site agent (gRPC on loopback, benchmark challenge,
Freivalds) and the pool turns active on the page; the agent's heartbeats show on the pool page.
An AI firm finds the pool, previews a placement, books it and watches the booking move live (the
worker dispatches the workload to the agent); it books again for tomorrow and cancels. The public
dashboard shows the new capacity and where the demand came from. Every page is saved as a
screenshot in ``test-artifacts/screenshots/``.
"""

import copy
import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone
from playwright.sync_api import Error as PlaywrightError

from tests.portal.conftest import E2E_WORKER_SETTINGS
from verification.services import PoolBeat, heartbeat_record

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are
    # still synchronous and safe, so let Django allow them.
    # Only for this module: child processes of later tests must not inherit it.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{base}/")


def sign_out(page: Any) -> None:
    page.click("header form button")


def fits_the_screen(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def wait_for_text(page: Any, selector: str, wanted: tuple[str, ...]) -> str:
    """Wait (up to 60 s) until the element's text is one of ``wanted``, changed by the page's
    own live updates (no reload by the test)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            text = page.inner_text(selector, timeout=5000).strip()
        except PlaywrightError:  # the page is being reloaded by its own script
            text = ""
        if text in wanted or time.monotonic() > deadline:
            return text
        page.wait_for_timeout(300)


@pytest.mark.django_db(transaction=True)
def test_register_verify_find_book_watch_cancel_and_see_it_on_the_dashboard(
    browser: Any,
    live_server: Any,
    portal_worker: Any,
    simulated_agent: str,
    alice: Any,
    dave: Any,
) -> None:
    base = live_server.url
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    page.goto(f"{base}/login/")
    shot(page, "01-sign-in")
    sign_in(page, base, "alice")

    # Register a center through the form: a wrong PUE first, kept input and a field message.
    page.click("text=My centers")
    shot(page, "02-my-centers-empty")
    page.click("text=Register a center")
    page.select_option("#id_cluster", label="NX · Zhongwei")
    page.fill("#id_name", "Desert Compute One")
    page.fill("#id_latitude", "37.52")
    page.fill("#id_longitude", "105.20")
    page.fill("#id_pue", "0.8")
    page.fill("#id_green_power_share", "0.85")
    page.fill("#id_agent_endpoint", simulated_agent)
    page.click("#center-form button[type=submit]")
    assert "greater than or equal to 1.0" in page.inner_text("#id_pue_error")
    assert page.input_value("#id_name") == "Desert Compute One"
    shot(page, "03-center-form-error")
    page.fill("#id_pue", "1.12")
    page.click("#center-form button[type=submit]")
    center_id = page.inner_text("#center-id")
    assert re.fullmatch(r"CN-NX-ZW-\d{4}", center_id)
    shot(page, "04-center-detail")

    # Declare the pool the agent fronts, then submit it for verification.
    page.click("text=Declare a pool")
    page.fill("#id_name", "A100 training pool")
    page.select_option("#id_accelerator", label="NVIDIA A100 80GB SXM")
    page.fill("#id_accelerators_per_node", "8")
    page.fill("#id_nodes", "4")
    page.fill("#id_intra_node_interconnect", "NVLink 3")
    page.fill("#id_inter_node_interconnect", "InfiniBand HDR")
    page.fill("#id_price_per_accelerator_hour", "9.80")
    page.fill("#id_currency", "CNY")
    page.fill("#id_declared_tflops_per_accelerator", "312")
    page.fill("#id_traits", "nvlink, rdma")
    shot(page, "05-pool-form")
    page.click("#pool-form button[type=submit]")
    pool_id = page.inner_text("#pool-id")
    assert pool_id == f"{center_id}-P01"
    assert page.inner_text("#pool-status") == "Draft"
    page.click("#submit-pool")
    assert page.inner_text("#pool-status") in ("Submitted", "Verifying", "Active")
    shot(page, "06-pool-submitted")

    # The worker verifies the pool against the agent; the page watches its status and shows
    # the verdict by itself (no reload by the user).
    status = wait_for_text(page, "#pool-status", ("Active", "Failed"))
    assert status == "Active", page.inner_text("#runs")
    run = page.locator("#runs tr[data-state=passed]")
    assert run.count() == 1
    # The agent reports utilization through the telemetry service's domain call.
    beats = [PoolBeat(pool_id, u, 32, round(32 * u)) for u in (0.25, 0.5, 0.75)]
    for beat in beats:
        heartbeat_record(actor=alice, agent_id="portal-e2e", sent_at=None, pools=[beat])
    page.reload()
    assert "24 of 32 healthy accelerators busy" in page.inner_text("body")
    shot(page, "07-pool-active-verified")
    run.locator("a").click()
    assert page.inner_text("#run-state") == "Passed"
    rounds = int(E2E_WORKER_SETTINGS["VERIFICATION_FREIVALDS_ROUNDS"])
    assert page.locator("#freivalds .badge.green").count() == rounds
    # One row per accelerator of the sampled node: 8 per node.
    assert page.locator("#devices tr").count() == 1 + 8
    # The evidence reads as sentences and tables, with the JSON one click away.
    evidence = page.inner_text("main")
    assert "{'" not in evidence and "SIMULATED" not in evidence and "True" not in evidence
    assert "The agent's inventory matches the declaration." in page.inner_text("#inventory-summary")
    assert page.locator("#inventory td .badge.green").count() == 3
    # Nothing in the inventory overflows its frame.
    assert page.evaluate(
        "(w => w.scrollWidth <= w.clientWidth + 1)"
        "(document.querySelector('#inventory').parentElement)"
    )
    assert fits_the_screen(page)
    run_json = page.get_attribute("#raw-json", "href")
    shot(page, "08-verification-run")
    page.click("#raw-json")
    assert page.url.endswith(run_json) and '"inventory_match"' in page.inner_text("body")
    page.go_back()

    page.click("text=My pools")
    shot(page, "09-my-pools")
    page.click("text=Change log")
    assert pool_id in page.inner_text("table.changes")
    shot(page, "10-change-log")
    page.click("text=API tokens")
    page.fill("#id_name", "site agent")
    page.click("#token-form button[type=submit]")
    assert page.inner_text("#new-token code").startswith("ci_")
    shot(page, "11-api-tokens")
    page.click("text=Acme Compute")
    page.fill("#id_username", "erin")
    page.click("#invite-form button[type=submit]")
    assert page.inner_text("#one-time-password")
    shot(page, "12-organization")
    sign_out(page)

    # An AI firm finds the verified pool with the search filters.
    sign_in(page, base, "dave")
    page.click("text=Find capacity")
    page.select_option("#id_accelerator", label="NVIDIA A100 80GB SXM")
    page.select_option("#id_hub", label="Ningxia")
    page.fill("#id_min_a100_equivalents", "30")
    page.click("#capacity-search button[type=submit]")
    row = page.locator(f'tr[data-pool="{pool_id}"]')
    assert row.count() == 1 and "Active" in row.inner_text()
    assert row.locator("td.free").inner_text() == "32"
    shot(page, "13-find-capacity")

    # Book it through a placement preview, with the data in Beijing-Tianjin-Hebei.
    row.locator("a.book").click()
    page.select_option("#id_data_hub", label="Beijing-Tianjin-Hebei")
    page.fill("#id_data_gb", "500")
    page.click("#workload-form button[type=submit]")
    assert pool_id in page.inner_text(".option")
    shot(page, "14-placement-preview")
    page.click(".option .book-option")
    booking_id = page.inner_text("h1").split()[1]
    assert booking_id.startswith("BK-")
    shot(page, "15-booking-confirmed")
    # The worker dispatches the workload to the agent; the page's poll shows it, no reload.
    status = wait_for_text(page, "#booking-status", ("Running", "Finished"))
    assert status in ("Running", "Finished"), status
    assert "Dispatched" in page.inner_text("#events")
    # The Workload column follows the events too, without a reload.
    cell = f'#allocations tr[data-pool="{pool_id}"] [data-workload]'
    page.wait_for_function(
        "sel => /^(running|succeeded)/.test(document.querySelector(sel).textContent.trim())",
        arg=cell,
        timeout=60_000,
    )
    panel = page.inner_text("#workload-spec")
    assert "Accelerator model" in panel and "accelerator_model" not in panel
    assert "Data in hub" in panel and " UTC" in panel
    shot(page, "16-booking-live")

    # Book again for tomorrow, then cancel it.
    tomorrow = (timezone.now() + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    page.goto(f"{base}/placement/")
    page.select_option("#id_accelerator_model", label="NVIDIA A100 80GB SXM")
    page.fill("#id_count", "16")
    page.fill("#id_earliest_start", tomorrow)
    page.fill("#id_duration_hours", "4")
    page.select_option("#id_data_hub", label="Yangtze River Delta")
    page.click("#workload-form button[type=submit]")
    page.click(".option .book-option")
    assert page.inner_text("#booking-status") == "Confirmed"
    page.fill("#cancel-form input[name=reason]", "plans changed")
    page.click("#cancel-booking")
    assert page.inner_text("#booking-status") == "Cancelled"
    page.click("text=My bookings")
    assert booking_id in page.inner_text("#bookings")
    shot(page, "17-my-bookings")
    sign_out(page)

    # The public dashboard counts the new capacity and shows where the demand came from.
    cache.clear()
    page.goto(f"{base}/")
    assert page.inner_text("#total-accelerators") == "32"
    assert page.inner_text("#verified-share") == "100%"
    assert "32" in page.inner_text('#by-hub tr[data-hub="NX"]')
    assert page.locator('#flows tr[data-flow="BTH-NX"]').count() == 1
    assert page.locator(".national-map .flows path").count() >= 1
    shot(page, "18-dashboard")
    context.close()

    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True
    )
    page = phone.new_page()
    for path, name in [("/", "19-phone-dashboard"), ("/capacity/", "20-phone-find-capacity")]:
        page.goto(f"{base}{path}")
        assert fits_the_screen(page), path
        shot(page, name)
    sign_in(page, base, "dave")
    page.goto(f"{base}/bookings/{booking_id}/")
    assert fits_the_screen(page)
    shot(page, "21-phone-booking")
    phone.close()


@pytest.mark.django_db(transaction=True)
def test_evidence_and_a_live_booking_read_in_the_browser(
    browser: Any,
    live_server: Any,
    alice: Any,
    dave: Any,
    acme: Any,
    make_pool: Any,
    settings: Any,
) -> None:
    """The evidence page and the live booking page on their own, without a worker (the journey
    above reaches them through real verification and dispatch, which a loaded machine slows):
    the evidence as sentences and tables that fit their frames, its JSON one click away; the
    booking's Workload column and status following the workload with no reload."""
    from brokers import services
    from brokers.choices import BookingStatus, EventKind
    from brokers.models import Allocation
    from brokers.placement import WorkloadSpec
    from registry.choices import Status
    from tests.portal.test_readable_pages import EVIDENCE
    from verification.models import VerificationRun

    settings.BROKER_DISPATCH = False  # the test plays the workload's part
    base = live_server.url
    pool = make_pool(acme, Status.ACTIVE)
    run = VerificationRun.objects.create(
        pool=pool,
        trigger="submitted",
        state="passed",
        verdict_reason="verified",
        **copy.deepcopy(EVIDENCE),
    )
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    sign_in(page, base, "alice")
    page.goto(f"{base}/runs/{run.run_id}/")
    text = page.inner_text("main")
    assert "{'" not in text and "True" not in text and "[]" not in text
    assert "matches the declaration" in page.inner_text("#inventory-summary")
    assert page.evaluate(
        "(w => w.scrollWidth <= w.clientWidth + 1)"
        "(document.querySelector('#inventory').parentElement)"
    )
    assert fits_the_screen(page)
    shot(page, "22-phone-verification-evidence")
    page.click("#raw-json")
    assert '"inventory_match"' in page.inner_text("body")
    page.goto(f"{base}/")
    sign_out(page)

    booking = services.booking_create(
        spec=WorkloadSpec(accelerator_model=pool.accelerator.slug, count=8),
        idempotency_key="browser-live",
        actor=dave,
        door="api",
    )
    sign_in(page, base, "dave")
    page.goto(f"{base}/bookings/{booking.national_id}/")
    assert "Accelerator model" in page.inner_text("#workload-spec")
    cell = f'#allocations tr[data-pool="{pool.national_id}"] [data-workload]'
    assert page.inner_text(cell).strip() == "–"
    for state, status in (
        ("running", BookingStatus.RUNNING),
        ("succeeded", BookingStatus.FINISHED),
    ):
        Allocation.objects.filter(booking=booking).update(
            workload_state=state, workload_id=booking.national_id
        )
        booking.refresh_from_db()
        services.booking_record(booking=booking, kind=EventKind.WORKLOAD, message=state, to=status)
        page.wait_for_function(
            "([sel, s]) => document.querySelector(sel).textContent.trim().startsWith(s)",
            arg=[cell, state],
            timeout=30_000,
        )
    assert wait_for_text(page, "#booking-status", ("Finished",)) == "Finished"
    shot(page, "23-phone-booking-finished")
    context.close()
