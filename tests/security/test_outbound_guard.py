"""The outbound-connection guard (``registry.netguard``) as webhooks and dispatch use it.

- A webhook receiver that redirects gets its 3xx recorded; the redirect is never followed.
- A name whose DNS answer turns private after registration is refused at delivery and at
  dispatch, before any connection.
- The connection goes to the address the guard checked (one lookup), with the URL's Host
  header; gRPC dials the checked address of an agent's name.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.utils import timezone

from brokers import dispatch, services
from brokers.choices import BookingStatus
from brokers.models import Booking
from registry import netguard, webhooks
from registry.choices import Door, Status
from registry.models import WebhookDelivery
from tests.brokers import conftest as broker_fixtures
from tests.brokers import test_dispatch_relay as relay_tests
from tests.brokers.conftest import spec
from tests.brokers.test_dispatch_relay import FakeAgent

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = "93.184.216.34"

# Fixtures of the broker's tests, used here too.
active_pool = broker_fixtures.active_pool
fake_agent = relay_tests.fake_agent


@pytest.fixture(autouse=True)
def _no_dispatch(settings: Any) -> None:
    """No dispatch unless a test calls it; placement reads the database (no stale snapshot)."""
    from brokers.placement import catalog

    settings.BROKER_DISPATCH = False
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 0
    catalog.invalidate()


class Receiver:
    """An HTTP server on ``host`` that answers every request with ``status`` (and ``headers``)
    and records (method, path, Host header)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status: int = 200) -> None:
        self.status = status
        self.headers: dict[str, str] = {}
        self.requests: list[tuple[str, str, str]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                receiver.requests.append((self.command, self.path, self.headers.get("Host", "")))
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _answer  # noqa: N815 (http.server API)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_port
        self.url = f"http://{host}:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(**kwargs: Any) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names ending in ``.example.test`` resolve to the answers queued here: each lookup takes
    the next one (the last one repeats); other names resolve for real."""
    answers: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in answers:
            queue = answers[host]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def _one_delivery(alice: Any, acme: Any, make_pool: Any, url: str) -> WebhookDelivery:
    webhooks.webhook_subscribe(organization=acme, url=url, actor=alice, door=Door.API)
    pool = make_pool(acme, Status.VERIFYING)
    from django.db import transaction

    from registry import services as registry_services

    with transaction.atomic():
        registry_services.lifecycle_transition(
            obj=pool, to=Status.ACTIVE, reason="verified", actor=None, door=Door.WORKER
        )
    return WebhookDelivery.objects.get()


@pytest.mark.usefixtures("held_deliveries")
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_webhook_redirect_is_not_followed(
    code: int, alice: Any, acme: Any, make_pool: Any, receivers: Callable[..., Receiver]
) -> None:
    elsewhere = receivers()
    redirecting = receivers(status=code)
    redirecting.headers["Location"] = elsewhere.url
    delivery = _one_delivery(alice, acme, make_pool, redirecting.url)
    delivery = webhooks.webhook_deliver(delivery_id=delivery.pk)
    assert [method for method, _, _ in redirecting.requests] == ["POST"]
    assert elsewhere.requests == [], "the redirect was followed to another host"
    assert delivery.state == WebhookDelivery.State.FAILED  # a 3xx is final, like other 4xx
    assert delivery.last_status_code == code
    assert "redirects are not followed" in delivery.last_error


@pytest.mark.usefixtures("held_deliveries")
def test_a_webhook_whose_dns_answer_turned_private_is_not_sent(
    settings: Any,
    alice: Any,
    acme: Any,
    make_pool: Any,
    receivers: Callable[..., Receiver],
    dns: dict[str, list[str]],
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    inside = receivers()  # a private service the attacker wants to reach
    dns["hooks.example.test"] = [PUBLIC]  # public when registered ...
    delivery = _one_delivery(
        alice, acme, make_pool, f"http://hooks.example.test:{inside.port}/hook"
    )
    dns["hooks.example.test"] = ["127.0.0.1"]  # ... loopback at delivery (rebinding)
    delivery = webhooks.webhook_deliver(delivery_id=delivery.pk)
    assert inside.requests == []
    assert delivery.state == WebhookDelivery.State.FAILED
    assert "outbound guard" in delivery.last_error


def _free_port_on_both(*hosts: str) -> int:
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = int(first.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every host")


@pytest.fixture
def loopback_one_is_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """For these tests, 127.0.0.1 passes the guard (it stands for a public host); every other
    loopback address (127.0.0.2 ...) is still refused."""
    original = netguard._forbidden
    monkeypatch.setattr(
        netguard, "_forbidden", lambda address: str(address) != "127.0.0.1" and original(address)
    )


@pytest.mark.usefixtures("held_deliveries")
def test_the_webhook_post_goes_to_the_address_checked_with_its_host_header(
    settings: Any,
    alice: Any,
    acme: Any,
    make_pool: Any,
    receivers: Callable[..., Receiver],
    dns: dict[str, list[str]],
    loopback_one_is_public: None,
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    port = _free_port_on_both("127.0.0.1", "127.0.0.2")
    checked, private = receivers(port=port), receivers(host="127.0.0.2", port=port)
    url = f"http://hooks.example.test:{port}/hook"
    # Registration and the check at delivery get the public answer; any later lookup of the
    # name (by an HTTP client resolving it again) would get the private one.
    dns["hooks.example.test"] = ["127.0.0.1", "127.0.0.1", "127.0.0.2"]
    delivery = _one_delivery(alice, acme, make_pool, url)
    delivery = webhooks.webhook_deliver(delivery_id=delivery.pk)
    assert delivery.state == WebhookDelivery.State.DELIVERED
    assert private.requests == []
    assert checked.requests == [("POST", "/hook", f"hooks.example.test:{port}")]


def _booking_on(dave: Any, acme: Any, make_active: Any, endpoint: str) -> tuple[Booking, Any]:
    pool = make_active(acme, size=8)
    pool.center.agent_endpoint = endpoint
    pool.center.save()
    booking = services.booking_create(
        spec=spec(earliest_start=timezone.now()),
        idempotency_key=f"guard-{endpoint}",
        actor=dave,
        door=Door.API,
    )
    return booking, pool


def test_dispatch_does_not_dial_a_private_agent_endpoint(
    settings: Any,
    dave: Any,
    acme: Any,
    active_pool: Any,
    fake_agent: FakeAgent,
) -> None:
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False
    # Registered while allowed (or rewritten in the database): the guard checks at connect time.
    booking, _ = _booking_on(dave, acme, active_pool, f"127.0.0.1:{fake_agent.port}")
    dispatch.dispatch(booking.pk)
    booking.refresh_from_db()
    assert fake_agent.started == []
    assert booking.status in (BookingStatus.FAILED, BookingStatus.REPLACED)
    assert "outbound guard" in booking.status_reason


def test_dispatch_refuses_an_agent_name_whose_answer_turned_private(
    settings: Any,
    dave: Any,
    acme: Any,
    active_pool: Any,
    fake_agent: FakeAgent,
    dns: dict[str, list[str]],
) -> None:
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False
    dns["agent-private.example.test"] = ["127.0.0.1"]
    endpoint = f"agent-private.example.test:{fake_agent.port}"
    booking, _ = _booking_on(dave, acme, active_pool, endpoint)
    dispatch.dispatch(booking.pk)
    booking.refresh_from_db()
    assert fake_agent.started == []
    assert "outbound guard" in booking.status_reason


def test_dispatch_dials_the_address_it_checked(
    settings: Any,
    dave: Any,
    acme: Any,
    active_pool: Any,
    fake_agent: FakeAgent,
    dns: dict[str, list[str]],
    loopback_one_is_public: None,
) -> None:
    settings.AGENT_ENDPOINT_ALLOW_LOOPBACK = False
    # gRPC's own resolver does not know this name: only the guard's checked address reaches it.
    dns["agent.example.test"] = ["127.0.0.1"]
    booking, _ = _booking_on(dave, acme, active_pool, f"agent.example.test:{fake_agent.port}")
    dispatch.dispatch(booking.pk)
    booking.refresh_from_db()
    assert len(fake_agent.started) == 1
    assert booking.status == BookingStatus.FINISHED
    assert (
        netguard.outbound_target(f"agent.example.test:{fake_agent.port}", allow_private=False)
        == f"127.0.0.1:{fake_agent.port}"
    )
