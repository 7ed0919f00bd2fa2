"""The ``interconnect`` command line against a real broker: tables, booking, errors."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from brokers.rpc.server import BrokerRuntime, build_server
from protos.errors import ERRORS
from registry import services as registry_services
from tests.brokers.broker_testing import ROOT, run_cli
from tests.brokers.conftest import next_hour

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


def run(broker: BrokerRuntime, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(broker.port, token, *args)


def test_capacity_place_book_bookings_cancel(
    broker: BrokerRuntime, dave: Any, acme: Any, active_pool: Any
) -> None:
    pool = active_pool(acme, size=8)
    _, token = registry_services.token_create(user=dave, name="cli")
    start = next_hour().isoformat()
    capacity = run(broker, token, "capacity", "--model", "nvidia-a100-80g")
    assert capacity.returncode == 0, capacity.stderr
    assert pool.national_id in capacity.stdout and "1 pool, 8 accelerators free" in capacity.stdout
    placed = run(
        broker,
        token,
        "place",
        "--model",
        "nvidia-a100-80g",
        "--count",
        "4",
        "--start",
        start,
        "--duration",
        "2h",
    )
    assert placed.returncode == 0 and "80.00 CNY" in placed.stdout and "why:" in placed.stdout
    # The time it understood, said back with its zone.
    assert f"earliest start: {next_hour():%Y-%m-%d %H:%M:%S} UTC" in placed.stdout
    booked = run(
        broker,
        token,
        "book",
        "--model",
        "nvidia-a100-80g",
        "--count",
        "4",
        "--start",
        start,
        "--key",
        "cli-1",
    )
    assert booked.returncode == 0, booked.stderr
    booking_id = booked.stdout.split("booking ")[1].split(":")[0]
    listed = run(broker, token, "bookings")
    assert booking_id in listed.stdout and "confirmed" in listed.stdout
    cancelled = run(broker, token, "cancel", booking_id)
    assert "cancelled" in cancelled.stdout
    watched = run(broker, token, "watch", booking_id)
    assert "ended: cancelled" in watched.stdout
    # Past events at the time they happened (the broker's clock), not "[0.0s]".
    events = watched.stdout.splitlines()[:-1]
    assert len(events) == 2 and all(
        re.match(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC  {booking_id} ", e) for e in events
    ), events
    assert "[" not in watched.stdout


def test_errors_print_the_status_and_exit_non_zero(
    broker: BrokerRuntime, dave: Any, acme: Any, active_pool: Any
) -> None:
    active_pool(acme, size=8)
    _, token = registry_services.token_create(user=dave, name="cli")
    full = run(broker, token, "book", "--model", "nvidia-a100-80g", "--count", "64", "--key", "x")
    assert full.returncode == ERRORS["booking.capacity_exceeded"].exit == 5
    assert "RESOURCE_EXHAUSTED" in full.stderr
    assert "reason: booking.no_placement" in full.stderr
    bad = run(
        broker, token, "place", "--model", "nvidia-a100-80g", "--count", "3", "--gang-size", "2"
    )
    assert bad.returncode == ERRORS["invalid"].exit == 1 and "gang_size:" in bad.stderr
    anon = run(broker, "ci_bad_token", "bookings")
    assert anon.returncode == ERRORS["unauthenticated"].exit == 3
    assert "UNAUTHENTICATED" in anon.stderr
    usage = run(broker, token, "book", "--duration", "soon")
    assert usage.returncode == 2


def test_a_value_the_request_cannot_carry_is_a_clean_cli_error(capsys: Any) -> None:
    from brokers.client import cli

    code = cli.main(
        ["--token", "ci_x_y", "--broker", "127.0.0.1:9", "place", "--model", "m", "--count", "-1"]
    )
    assert code == 2
    assert "invalid argument" in capsys.readouterr().err


def test_help_is_whole_and_says_formats_and_defaults() -> None:
    def helped(*args: str) -> str:
        done = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "interconnect"), *args, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stderr == ""
        return done.stdout

    top = helped()
    assert "``" not in top and "through the gRPC broker." in top
    assert "--broker HOST:PORT" in top and "$INTERCONNECT_BROKER" in top
    assert "$INTERCONNECT_TOKEN" in top and "examples:" in top
    book = helped("book")
    assert "default 1h" in book and "tomorrow 09:00" in book and "without a zone: UTC" in book
    capacity = helped("capacity")
    assert "hub code, e.g. NX" in capacity and "cluster code" in capacity
