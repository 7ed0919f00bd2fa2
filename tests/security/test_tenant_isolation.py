"""S1: the cross-door tenant isolation matrix (RELIABILITY 4.3, issue 7).

One generated matrix over the three doors. Each tenant-owned object type has one object owned by
org A (the operator ``acme`` or the AI firm ``deepai``), which no actor below may see:

- REST: every operation drf-spectacular's endpoint enumerator finds under ``/api/`` (every router
  route, detail route and custom action of every app);
- gRPC: every method of ``interconnect.broker.v1.Broker`` (from the descriptor) and
  ``Telemetry.SendHeartbeat``;
- portal: every URL pattern with an object parameter, by GET and by POST.

Actors: anonymous, an admin of another org of the same kind, a member of another org of the
same kind, and an org of the other kind (an AI firm on operator objects, an operator that does
not host the booking on a firm's objects). A refused case is one where the answer to the
foreign object is the answer to a nonexistent one (same status, and for REST and gRPC the same
body or code), is a 4xx, and A's rows are byte-for-byte the same afterwards. A list never
contains any of A's objects, whatever the query parameters (``?operator=``, ``?org=``,
``?search=``...). A REST operation or gRPC method the matrix does not know fails the test.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import pytest
from django.core.cache import cache
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from drf_spectacular.generators import EndpointEnumerator
from rest_framework.test import APIClient

from brokers import market
from brokers.client.client import workload_spec
from brokers.models import (
    Allocation,
    Booking,
    BookingEvent,
    PriorityGrant,
    Quota,
    ResaleOffer,
)
from brokers.rpc.server import build_server
from protos import agent_pb2, agent_pb2_grpc, broker_pb2, broker_pb2_grpc
from registry import services as registry_services
from registry.choices import ChangeAction, OrgKind, Role, Status
from registry.models import (
    ApiToken,
    Center,
    ChangeRecord,
    Membership,
    Organization,
    Pool,
    WebhookDelivery,
    WebhookSubscription,
)
from tests.factories import OrganizationFactory, UserFactory
from tests.figures import figure
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun
from verification.rpc.telemetry import create_telemetry_server, stop_telemetry_server

pytestmark = pytest.mark.django_db(transaction=True)

MARK = "s1secret"  # in every free-text field of A's objects: found in a response = a leak

# --- REST: what the matrix knows -------------------------------------------------------------

# Routes with no tenant-owned object: public reference data and documentation (read-only).
PUBLIC_READ_ONLY = {
    ("GET", "/api/schema/"),
    ("GET", "/api/docs/"),
    ("GET", "/api/redoc/"),
    ("GET", "/api/v1/hubs/"),
    ("GET", "/api/v1/hubs/{code}/"),
    ("GET", "/api/v1/clusters/"),
    ("GET", "/api/v1/clusters/{code}/"),
    ("GET", "/api/v1/hub-links/"),
    ("GET", "/api/v1/hub-links/{pk}/"),
    ("GET", "/api/v1/accelerators/"),
    ("GET", "/api/v1/accelerators/{slug}/"),
    ("GET", "/api/v1/summary/"),
    ("GET", "/api/v1/booking-classes/"),
}
# Reads that return many rows: none of A's objects may be among them, whatever the parameters.
LIST_READS = {
    ("GET", "/api/v1/centers/"),
    ("GET", "/api/v1/pools/"),
    ("GET", "/api/v1/verification-runs/"),
    ("GET", "/api/v1/heartbeats/"),
    ("GET", "/api/v1/downtimes/"),
    ("GET", "/api/v1/bookings/"),
    ("GET", "/api/v1/webhooks/"),
    ("GET", "/api/v1/webhook-deliveries/"),
    ("GET", "/api/v1/tokens/"),
    ("GET", "/api/v1/changes/"),
    ("GET", "/api/v1/organizations/"),
    ("GET", "/api/v1/capacity/"),
    ("GET", "/api/v1/usage/"),
    ("GET", "/api/v1/offers/"),
    ("POST", "/api/v1/placements/"),  # a computation over listed pools; books nothing
}
# Query parameters that must never widen a list (each tried on every list).
WIDENING_PARAMS: list[Callable[[World], dict[str, str]]] = [
    lambda w: {},
    lambda w: {"operator": "acme", "org": "acme", "organization": "deepai", "owner": "acme"},
    lambda w: {"search": w.draft.national_id, "status": "draft"},
    lambda w: {"pool": w.draft.national_id, "center": w.draft.center.national_id},
    lambda w: {"pool": w.active.national_id, "organization": "acme", "page_size": "1000"},
    lambda w: {"ordering": "-created_at", "all": "1", "include_drafts": "1", "scope": "all"},
]
# Object routes addressed by a query parameter rather than the path.
QUERY_OBJECT = {("GET", "/api/v1/availability/"): ("pool", "draft")}
# Creates: the body points at one of A's objects (or claims A as the owner).
CREATES = {
    "/api/v1/centers/": lambda w, ref: {
        "operator": "acme",
        "name": f"probe {uuid.uuid4().hex[:6]}",
        "cluster": "ZW",
        "latitude": 37.5,
        "longitude": 105.2,
        "pue": 1.2,
        "green_power_share": 0.5,
        "agent_endpoint": "agent.example.com:50061",
    },
    "/api/v1/pools/": lambda w, ref: {
        "center": ref("center"),
        "name": "probe",
        "accelerator": "nvidia-a100-80g",
        "nodes": 1,
        "accelerators_per_node": 8,
        "price_per_accelerator_hour": "1.00",
    },
    "/api/v1/downtimes/": lambda w, ref: {
        "pool": ref("pool"),
        "start": (timezone.now() + dt.timedelta(days=2)).isoformat(),
        "end": (timezone.now() + dt.timedelta(days=2, hours=1)).isoformat(),
        "reason": "probe",
    },
    "/api/v1/bookings/": lambda w, ref: {
        "spec": {
            "accelerator_model": "nvidia-a100-80g",
            "count": 1,
            "earliest_start": (timezone.now() + dt.timedelta(hours=2)).isoformat(),
            "duration_seconds": 3600,
        },
        "option": [{"pool": ref("pool"), "accelerators": 1}],
        "idempotency_key": w.booking.idempotency_key,  # deepai's key: must not find its booking
    },
    "/api/v1/webhooks/": lambda w, ref: {
        "url": "https://hooks.example.com/probe",
        "organization": "acme",
    },
    "/api/v1/tokens/": lambda w, ref: {"name": "probe", "user": w.users["alice"].pk},
}
# Detail routes: the first path segment names the object type.
OBJECT_OF_SEGMENT = {
    "centers": "center",
    "pools": "pool",
    "verification-runs": "run",
    "heartbeats": "heartbeat",
    "downtimes": "downtime",
    "bookings": "booking",
    "webhooks": "webhook",
    "webhook-deliveries": "delivery",
    "tokens": "token",
    "changes": "change",
    "organizations": "organization",
    "quotas": "organization",
    "priority-grants": "organization",
    "offers": "offer",
}
# Who owns each object type and who tries it (the owner is the positive control).
OPERATOR_ACTORS = {"anon": None, "other_admin": "carol", "other_member": "rita", "cross": "dave"}
FIRM_ACTORS = {"anon": None, "other_admin": "erin", "other_member": "olaf", "cross": "carol"}
OWNERS = {
    "center": ("alice", OPERATOR_ACTORS),
    "pool": ("alice", OPERATOR_ACTORS),
    "run": ("alice", OPERATOR_ACTORS),
    "heartbeat": ("alice", OPERATOR_ACTORS),
    "downtime": ("alice", OPERATOR_ACTORS),
    "webhook": ("alice", OPERATOR_ACTORS),
    "delivery": ("alice", OPERATOR_ACTORS),
    "token": ("alice", OPERATOR_ACTORS),
    "change": ("alice", OPERATOR_ACTORS),
    "booking": ("dave", FIRM_ACTORS),
    "organization": ("dave", FIRM_ACTORS),
    # A withdrawn offer: only its seller sees it (open offers are the market's; their own test).
    "offer": ("dave", FIRM_ACTORS),
}
NONEXISTENT = {
    "national_id": "ZZ-NONE-S1",
    "run_id": "00000000-0000-4000-8000-000000000000",
    "pk": "2147483000",
    "id": "2147483000",
    "key_id": "nonexistents1",
    "slug": "no-such-org-s1",
}
WRITE_BODY = {
    "name": "probe",
    "to": "retired",
    "reason": "probe",
    "max_concurrent_accelerators": 1,
    "max_accelerator_hours_per_month": 1,
    "accelerator_hours": 1,
    "price": "1.00",
}

# --- gRPC: what the matrix knows --------------------------------------------------------------

# Method -> (object it is aimed at, request built from the world and a target id).
BROKER_METHODS: dict[str, Callable[[World, str], Any]] = {
    "GetBooking": lambda w, ref: broker_pb2.GetBookingRequest(booking_id=ref),
    "CancelBooking": lambda w, ref: broker_pb2.CancelBookingRequest(booking_id=ref, reason="x"),
    "ConfirmBooking": lambda w, ref: broker_pb2.ConfirmBookingRequest(booking_id=ref),
    "WatchBooking": lambda w, ref: broker_pb2.WatchBookingRequest(booking_id=ref),
    # List-like: the answer must simply not contain A's objects.
    "ListBookings": lambda w, ref: broker_pb2.ListBookingsRequest(page_size=500),
    "ListOffers": lambda w, ref: broker_pb2.ListOffersRequest(page_size=500),
    "OfferBooking": lambda w, ref: broker_pb2.OfferBookingRequest(booking_id=ref, price="1"),
    "BuyOffer": lambda w, ref: broker_pb2.BuyOfferRequest(offer_id=ref),
    "WithdrawOffer": lambda w, ref: broker_pb2.WithdrawOfferRequest(offer_id=ref),
    "QueryCapacity": lambda w, ref: broker_pb2.QueryCapacityRequest(page_size=500),
    "Place": lambda w, ref: broker_pb2.PlaceRequest(
        spec=workload_spec(
            accelerator_model="nvidia-a100-80g",
            count=1,
            earliest_start=timezone.now() + dt.timedelta(hours=2),
        ),
        max_options=20,
    ),
    # Book on A's draft pool with A's idempotency key: refused like a missing pool, and never
    # returns deepai's booking.
    "Book": lambda w, ref: broker_pb2.BookRequest(
        spec=workload_spec(
            accelerator_model="nvidia-a100-80g",
            count=1,
            earliest_start=timezone.now() + dt.timedelta(hours=2),
        ),
        idempotency_key=w.booking.idempotency_key,
        option=[broker_pb2.OptionChoice(pool=ref, accelerators=1)],
    ),
}
BROKER_TARGET = {  # which object id the request carries
    "GetBooking": "booking",
    "CancelBooking": "booking",
    "ConfirmBooking": "booking",
    "WatchBooking": "booking",
    "ListBookings": None,
    "ListOffers": None,
    "OfferBooking": "booking",
    "BuyOffer": "offer",
    "WithdrawOffer": "offer",
    "QueryCapacity": None,
    "Place": None,
    "Book": "pool",
}

# --- portal: what the matrix knows ------------------------------------------------------------

PORTAL_OBJECT = {
    "center-detail": "center",
    "pool-create": "center",
    "center-downtime-declare": "center",
    "pool-detail": "pool",
    "pool-status": "pool",
    "pool-submit": "pool",
    "pool-transition": "pool",
    "pool-reverify": "pool",
    "downtime-declare": "pool",
    "run-detail": "run",
    "booking-detail": "booking",
    "booking-events": "booking",
    "booking-cancel": "booking",
    "booking-offer": "booking",
    "offer-buy": "offer",
    "offer-withdraw": "offer",
    "token-revoke": "token",
}
# Parameterless portal URLs that are not pages of tenant data.
PORTAL_NOT_PAGES = {"login", "logout", "password-change", "healthz", "readyz"}


def PORTAL_WIDENING(w: World) -> list[str]:  # noqa: N802 (a table, like the others)
    return [
        "",
        f"q={w.draft.national_id}&search={w.draft.national_id}&operator=acme&status=draft",
        f"ids={w.booking.national_id}&organization=deepai&org=deepai&all=1",
    ]


PORTAL_POST = {
    "to": "retired",
    "reason": "probe",
    "name": "probe",
    "start": "2031-01-01T00:00",
    "end": "2031-01-01T01:00",
}


@dataclass
class World:
    users: dict[str, Any]
    draft: Pool
    active: Pool
    booking: Booking
    objects: dict[str, Any]  # object type -> A's object
    refs: dict[str, str]  # object type -> its public identifier in URLs
    secrets: list[str]


@dataclass
class Tally:
    cases: int = 0
    refused: int = 0
    leaked: list[str] = field(default_factory=list)
    mutated: list[str] = field(default_factory=list)
    unlisted: list[str] = field(default_factory=list)
    objects: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)

    def case(self, door: str, obj: str, method: str) -> None:
        self.cases += 1
        self.objects.add(obj)
        self.methods.add(f"{door}:{method}")


def _book(user: Any, pool: Pool, n: int, *, key: str, hold: bool = True) -> Booking:
    from brokers import services
    from brokers.placement import WorkloadSpec

    spec = WorkloadSpec(
        accelerator_model=pool.accelerator.slug,
        count=n,
        earliest_start=timezone.now() + dt.timedelta(hours=1),
        duration=dt.timedelta(hours=2),
        data_hub="BTH",
    )
    return services.booking_create(
        spec=spec,
        option=[(pool.national_id, n)],
        idempotency_key=key,
        actor=user,
        door="api",
        hold=hold,
    )


@pytest.fixture
def world(personas: dict[str, Any], acme: Any, rival: Any, deepai: Any, make_pool: Any) -> World:
    otherai = OrganizationFactory(slug="otherai", name="Other AI", kind=OrgKind.AI_FIRM)
    users = {k: v for k, v in personas.items() if v is not None}
    users["rita"] = UserFactory(
        username="rita", membership__organization=rival, membership__role=Role.MEMBER
    )
    users["erin"] = UserFactory(
        username="erin", membership__organization=otherai, membership__role=Role.ADMIN
    )
    users["olaf"] = UserFactory(
        username="olaf", membership__organization=otherai, membership__role=Role.MEMBER
    )
    now = timezone.now()
    draft = make_pool(acme, Status.DRAFT, name=f"{MARK}-draft-pool")
    active = make_pool(acme, Status.ACTIVE)
    run = VerificationRun.objects.create(
        pool=active, trigger="submitted", state="passed", verdict_reason=f"{MARK}-verdict"
    )
    heartbeat = Heartbeat.objects.create(
        pool=active,
        time=now,
        agent_id=f"{MARK}-agent",
        utilization=0.5,
        accelerators_healthy=1,
        accelerators_busy=0,
    )
    downtime = ScheduledDowntime.objects.create(
        pool=active,
        start=now + dt.timedelta(days=1),
        end=now + dt.timedelta(days=1, hours=1),
        reason=f"{MARK}-downtime",
        declared_by=users["alice"],
    )
    webhook = WebhookSubscription.objects.create(
        organization=acme, url=f"https://hooks.example.com/{MARK}-hook"
    )
    delivery = WebhookDelivery.objects.create(
        subscription=webhook, event="pool.verified", payload={"marker": f"{MARK}-delivery"}
    )
    token, _ = registry_services.token_create(user=users["alice"], name=f"{MARK}-token")
    change = ChangeRecord.objects.create(
        owner=acme,
        actor=users["alice"],
        door="api",
        object_type="pool",
        object_id=draft.pk,
        object_key=draft.national_id,
        object_repr=f"{MARK}-change",
        action=ChangeAction.UPDATE,
    )
    booking = _book(users["dave"], active, 2, key=f"{MARK}-key")
    sold = _book(users["dave"], active, 1, key=f"{MARK}-offered", hold=False)
    offer = market.offer_create(booking=sold, actor=users["dave"], door="api", price=Decimal(7))
    offer = market.offer_withdraw(offer=offer, actor=users["dave"], door="api")
    objects = {
        "center": draft.center,
        "pool": draft,
        "run": run,
        "heartbeat": heartbeat,
        "downtime": downtime,
        "webhook": webhook,
        "delivery": delivery,
        "token": token,
        "change": change,
        "booking": booking,
        "organization": deepai,
        "offer": offer,
    }
    refs = {
        "center": draft.center.national_id,
        "pool": draft.national_id,
        "run": str(run.run_id),
        "heartbeat": str(heartbeat.pk),
        "downtime": str(downtime.pk),
        "webhook": str(webhook.pk),
        "delivery": str(delivery.pk),
        "token": token.key_id,
        "change": str(change.pk),
        "booking": booking.national_id,
        "organization": deepai.slug,
        "offer": offer.national_id,
    }
    secrets = [
        MARK,
        draft.national_id,
        draft.center.national_id,
        str(run.run_id),
        token.key_id,
        str(delivery.event_id),
        booking.national_id,
        sold.national_id,
        offer.national_id,
    ]
    return World(users, draft, active, booking, objects, refs, secrets)


def snapshot() -> dict[str, Any]:
    """Every row owned by acme or deepai (the orgs whose objects are attacked)."""
    orgs = list(Organization.objects.filter(slug__in=["acme", "deepai"]))

    def rows(qs: Any, *exclude: str) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in row.items() if k not in exclude} for row in qs.order_by("pk").values()
        ]

    return {
        "org": rows(Organization.objects.filter(pk__in=[o.pk for o in orgs])),
        "membership": rows(Membership.objects.filter(organization__in=orgs)),
        "center": rows(Center.objects.filter(operator__in=orgs)),
        "pool": rows(Pool.objects.filter(center__operator__in=orgs)),
        "run": rows(VerificationRun.objects.filter(pool__center__operator__in=orgs)),
        "heartbeat": rows(Heartbeat.objects.filter(pool__center__operator__in=orgs)),
        "downtime": rows(ScheduledDowntime.objects.filter(pool__center__operator__in=orgs)),
        "booking": rows(Booking.objects.filter(organization__in=orgs)),
        "allocation": rows(Allocation.objects.filter(pool__center__operator__in=orgs)),
        "event": rows(BookingEvent.objects.filter(booking__organization__in=orgs)),
        "quota": rows(Quota.objects.filter(organization__in=orgs)),
        "grant": rows(PriorityGrant.objects.filter(organization__in=orgs)),
        "offer": rows(ResaleOffer.objects.filter(seller__in=orgs)),
        "webhook": rows(WebhookSubscription.objects.filter(organization__in=orgs)),
        "delivery": rows(WebhookDelivery.objects.filter(subscription__organization__in=orgs)),
        # An actor's own token (dave acts against acme's objects) records its use.
        "token": rows(
            ApiToken.objects.filter(user__membership__organization__in=orgs), "last_used_at"
        ),
        "change": ChangeRecord.objects.filter(owner__in=orgs).count(),
    }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [k for k in before if before[k] != after[k]]


# --- REST -------------------------------------------------------------------------------------


def rest_operations() -> list[tuple[str, str]]:
    return sorted(
        {(method, path) for path, _, method, _ in EndpointEnumerator().get_api_endpoints()}
    )


def _api_client(user: Any) -> APIClient:
    client = APIClient()
    if user is not None:
        _, raw = registry_services.token_create(user=user, name="s1-actor")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _rest_call(client: APIClient, method: str, url: str, body: Any = None) -> Any:
    cache.clear()  # throttles: the foreign and the nonexistent call must meet the same limits
    if method in ("GET", "DELETE", "HEAD"):
        return getattr(client, method.lower())(url)
    return getattr(client, method.lower())(url, body if body is not None else {}, format="json")


def _body(response: Any, sent: str = "") -> Any:
    """The JSON body, with the identifier the caller sent replaced by a placeholder: an error
    that echoes the caller's own input ("Unknown pool X.") tells it nothing new."""
    text = (response.content or b"null").decode(errors="replace")
    if sent:
        text = text.replace(sent, "<sent>")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _leaks(w: World, content: bytes, sent: str = "") -> list[str]:
    text = content.decode(errors="replace")
    if sent:
        text = text.replace(sent, "<sent>")
    return [s for s in w.secrets if s in text]


def run_rest(w: World, t: Tally) -> None:
    clients = {name: _api_client(w.users.get(name)) for name in _all_actor_names()}
    for method, path in rest_operations():
        op = f"{method} {path}"
        if (method, path) in PUBLIC_READ_ONLY:
            continue
        if (method, path) in LIST_READS:
            _rest_list(w, t, clients, method, path)
        elif (method, path) in QUERY_OBJECT:
            param, _ = QUERY_OBJECT[(method, path)]
            _rest_object(w, t, clients, method, path, obj="pool", param=param)
        elif method == "POST" and path in CREATES:
            _rest_create(w, t, clients, path)
        elif "{" in path and path.split("/")[3] in OBJECT_OF_SEGMENT:
            _rest_object(w, t, clients, method, path, obj=OBJECT_OF_SEGMENT[path.split("/")[3]])
        else:
            t.unlisted.append(op)


def _all_actor_names() -> list[str]:
    names = {"anon", "alice", "dave"}
    for actors in (OPERATOR_ACTORS, FIRM_ACTORS):
        names |= {v or "anon" for v in actors.values()}
    return sorted(names)


def _blind(w: World, text: str, none: str = "ZZ-NONE-S1") -> str:
    """``text`` with A's hidden identifiers in place of ``none`` (pool first: it extends the
    center's id)."""
    return text.replace(w.draft.national_id, none).replace(w.draft.center.national_id, none)


def _rest_list(w: World, t: Tally, clients: dict[str, APIClient], method: str, path: str) -> None:
    body = {"accelerator_model": "nvidia-a100-80g", "count": 1, "max_options": 20}
    for actor in _all_actor_names():
        if actor in ("alice", "dave"):
            continue  # owners (and the booking's host) may see their own
        for params in WIDENING_PARAMS:
            query = "&".join(f"{k}={v}" for k, v in params(w).items())
            url = f"{path}?{query}" if query else path
            t.case("rest", OBJECT_OF_SEGMENT.get(path.split("/")[3], "pool"), f"{method} list")
            response = _rest_call(clients[actor], method, url, body)
            text = response.content.decode()
            # An error may echo the caller's own parameters; a page of results may not.
            found = _leaks(w, (_blind(w, text) if response.status_code >= 400 else text).encode())
            if _blind(w, url) != url:
                # A filter on A's hidden object must answer as a filter on a missing one: no
                # existence oracle through "Select a valid choice" or an empty-but-200 page.
                control = _rest_call(clients[actor], method, _blind(w, url), body)
                mine = (response.status_code, _blind(w, response.content.decode(), "<sent>"))
                none = (
                    control.status_code,
                    control.content.decode().replace("ZZ-NONE-S1", "<sent>"),
                )
                if mine != none:
                    found.append(f"differs from a missing id: {mine!r:.200} vs {none!r:.200}")
            if found or response.status_code >= 500:
                t.leaked.append(f"REST {method} {url} as {actor}: {response.status_code} {found}")
            else:
                t.refused += 1


def _rest_object(
    w: World,
    t: Tally,
    clients: dict[str, APIClient],
    method: str,
    path: str,
    *,
    obj: str,
    param: str | None = None,
) -> None:
    owner, actors = OWNERS[obj]
    name = ""
    if param is None:
        name = path[path.index("{") + 1 : path.index("}")]
        url = path.replace("{" + name + "}", w.refs[obj])
        missing = path.replace("{" + name + "}", NONEXISTENT[name])
    else:
        url, missing = f"{path}?{param}={w.refs[obj]}", f"{path}?{param}=ZZ-NONE-S1"
    body = WRITE_BODY
    last = path.rstrip("/").split("/")[-1]
    label = "detail" if last.startswith("{") else last  # a custom action is named by its verb
    if method == "GET":  # positive control: the owner reaches the object at this URL
        response = _rest_call(clients[owner], method, url)
        assert response.status_code == 200, (url, owner, response.status_code, _body(response))
    for role, actor in actors.items():
        actor = actor or "anon"
        t.case("rest", obj, f"{method} {label}")
        before = snapshot()
        response = _rest_call(clients[actor], method, url, body)
        after = snapshot()
        control = _rest_call(clients[actor], method, missing, body)
        where = f"REST {method} {url} as {actor} ({role})"
        changed = _diff(before, after)
        if changed:
            t.mutated.append(f"{where}: {changed}")
        ref, none = w.refs[obj], NONEXISTENT.get(name if param is None else "national_id", "")
        refused = (
            400 <= response.status_code < 500
            and response.status_code == control.status_code
            and _body(response, ref) == _body(control, none)
            and not _leaks(w, response.content, ref)
            # Another admin of the same kind is refused for the object, not for a role.
            and (role != "other_admin" or response.status_code in (404, 405))
        )
        if refused and not changed:
            t.refused += 1
        elif not refused:
            t.leaked.append(
                f"{where}: {response.status_code} {_body(response)!r:.200} "
                f"(nonexistent: {control.status_code} {_body(control)!r:.200})"
            )


def _rest_create(w: World, t: Tally, clients: dict[str, APIClient], path: str) -> None:
    make_body = CREATES[path]
    obj = {"/api/v1/pools/": "center", "/api/v1/downtimes/": "pool", "/api/v1/bookings/": "pool"}
    target = obj.get(path)
    for actor in _all_actor_names():
        if actor in ("alice", "dave"):
            continue
        t.case("rest", target or OBJECT_OF_SEGMENT[path.split("/")[3]], "POST create")
        before = snapshot()
        response = _rest_call(clients[actor], "POST", path, make_body(w, lambda o: w.refs[o]))
        after = snapshot()
        where = f"REST POST {path} as {actor}"
        changed = _diff(before, after)
        ref = w.refs[target] if target else ""
        leaked = _leaks(w, response.content, ref)
        if target is not None:
            control = _rest_call(
                clients[actor], "POST", path, make_body(w, lambda o: NONEXISTENT["national_id"])
            )
            same = (response.status_code, _body(response, ref)) == (
                control.status_code,
                _body(control, NONEXISTENT["national_id"]),
            )
            if not (400 <= response.status_code < 500 and same):
                leaked.append(
                    f"{response.status_code} {_body(response)!r:.200} (nonexistent: "
                    f"{control.status_code} {_body(control)!r:.200})"
                )
        if changed:
            t.mutated.append(f"{where}: {changed}")
        if leaked:
            t.leaked.append(f"{where}: {leaked}")
        if not changed and not leaked:
            t.refused += 1


# --- gRPC -------------------------------------------------------------------------------------


@pytest.fixture
def grpc_servers() -> Iterator[tuple[int, int]]:
    broker = build_server("127.0.0.1:0", max_workers=4)
    telemetry, telemetry_port = create_telemetry_server("127.0.0.1:0", max_workers=4)
    yield broker.port, telemetry_port
    broker.stop(grace=0).wait()
    stop_telemetry_server(telemetry, grace=0)


def _grpc_call(stub: Any, name: str, request: Any, token: str | None) -> tuple[Any, Any]:
    """(code, answer): the answer of a unary call, or the list of a stream's messages."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    try:
        answer = getattr(stub, name)(request, metadata=metadata, timeout=10)
        if not hasattr(answer, "SerializeToString"):
            answer = list(answer)
        return grpc.StatusCode.OK, answer
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


def run_grpc(w: World, t: Tally, broker_port: int, telemetry_port: int) -> None:
    service = broker_pb2.DESCRIPTOR.services_by_name["Broker"]
    tokens = {
        name: registry_services.token_create(user=w.users[name], name="s1-grpc")[1]
        for name in _all_actor_names()
        if name != "anon"
    }
    tokens["anon"] = None  # type: ignore[assignment]
    with grpc.insecure_channel(f"127.0.0.1:{broker_port}") as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        for method in service.methods:
            if method.name not in BROKER_METHODS:
                t.unlisted.append(f"gRPC Broker.{method.name}")
                continue
            target = BROKER_TARGET[method.name]
            # Book aims at acme's pool with deepai's idempotency key: tried by non-deepai actors.
            obj = "booking" if target in (None, "pool") else target
            owner, actors = OWNERS[obj]
            for role, actor in actors.items():
                actor = actor or "anon"
                t.case("grpc", obj, method.name)
                ref = w.refs[target] if target else ""
                before = snapshot()
                code, answer = _grpc_call(
                    stub, method.name, BROKER_METHODS[method.name](w, ref), tokens[actor]
                )
                after = snapshot()
                where = f"gRPC Broker.{method.name} as {actor} ({role})"
                changed = _diff(before, after)
                if changed:
                    t.mutated.append(f"{where}: {changed}")
                if role == "anon":
                    ok = code == grpc.StatusCode.UNAUTHENTICATED
                elif target is None:
                    ok = code in (grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED) and not (
                        _leaks(w, str(answer).encode())
                    )
                else:
                    control = _grpc_call(
                        stub,
                        method.name,
                        BROKER_METHODS[method.name](w, NONEXISTENT["national_id"]),
                        tokens[actor],
                    )
                    ok = (
                        code != grpc.StatusCode.OK
                        and code == control[0]
                        and str(answer).replace(ref, "<sent>")
                        == str(control[1]).replace(NONEXISTENT["national_id"], "<sent>")
                        and (
                            role == "cross"
                            or code == grpc.StatusCode.NOT_FOUND
                            or method.name == "Book"
                        )
                        and not _leaks(w, str(answer).encode(), ref)
                    )
                if not ok:
                    t.leaked.append(f"{where}: {code} {str(answer)[:200]}")
                elif not changed:
                    t.refused += 1
    # Telemetry (hosted by the platform): SendHeartbeat for acme's pools, by everyone but acme.
    for method in agent_pb2.DESCRIPTOR.services_by_name["Telemetry"].methods:
        if method.name != "SendHeartbeat":
            t.unlisted.append(f"gRPC Telemetry.{method.name}")
    with grpc.insecure_channel(f"127.0.0.1:{telemetry_port}") as channel:
        stub = agent_pb2_grpc.TelemetryStub(channel)
        for pool in (w.draft, w.active):
            request = agent_pb2.SendHeartbeatRequest(
                agent_id="probe",
                center_national_id=pool.center.national_id,
                pools=[
                    agent_pb2.PoolHeartbeat(
                        pool_national_id=pool.national_id,
                        pool_key="k",
                        utilization=0.9,
                        accelerators_healthy=1,
                        accelerators_busy=1,
                    )
                ],
            )
            for role, actor in OPERATOR_ACTORS.items():
                actor = actor or "anon"
                t.case("grpc", "heartbeat", "SendHeartbeat")
                before = snapshot()
                code, answer = _grpc_call(stub, "SendHeartbeat", request, tokens[actor])
                changed = _diff(before, snapshot())
                expected = {
                    "anon": {grpc.StatusCode.UNAUTHENTICATED},
                    "cross": {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND},
                }.get(role, {grpc.StatusCode.NOT_FOUND})
                where = f"gRPC Telemetry.SendHeartbeat {pool.national_id} as {actor}"
                if changed:
                    t.mutated.append(f"{where}: {changed}")
                if code not in expected:
                    t.leaked.append(f"{where}: {code} {answer}")
                elif not changed:
                    t.refused += 1
    t.methods.add("grpc:telemetry")


# --- mutual TLS (issue 12) -------------------------------------------------------------------

# Agent methods: a request each (an existing workload id, acme's pool key).
AGENT_REQUESTS: dict[str, Callable[[], Any]] = {
    "GetInventory": lambda: agent_pb2.GetInventoryRequest(),
    "RunBenchmark": lambda: agent_pb2.RunBenchmarkRequest(
        n=8, dtype=agent_pb2.DTYPE_FLOAT32, steps=1, challenge_id="s1", devices=[]
    ),
    "OpenBenchmark": lambda: agent_pb2.OpenBenchmarkRequest(challenge_id="s1"),
    "StartWorkload": lambda: agent_pb2.StartWorkloadRequest(
        workload_id="s1-probe", pool_key="nvidia-a100-80g", accelerators=1, duration_seconds=60
    ),
    "GetWorkload": lambda: agent_pb2.GetWorkloadRequest(workload_id="s1-acme"),
    "StopWorkload": lambda: agent_pb2.StopWorkloadRequest(workload_id="s1-acme", reason="s1"),
    "WatchWorkload": lambda: agent_pb2.WatchWorkloadRequest(workload_id="s1-acme"),
    "HoldCapacity": lambda: agent_pb2.HoldCapacityRequest(
        hold_id="s1-probe", pool_key="nvidia-a100-80g", accelerators=1
    ),
    "ReleaseCapacity": lambda: agent_pb2.ReleaseCapacityRequest(hold_id="s1-acme", reason="s1"),
}


@dataclass
class MtlsDoor:
    telemetry_port: int
    agent_port: int
    agent: Any  # acme's agent runtime
    files: dict[str, Any]  # actor -> the certificate files it holds (its own center's)
    acme_files: Any


@pytest.fixture
def mtls_door(world: World, tmp_path: Any, settings: Any, rival: Any) -> Iterator[MtlsDoor]:
    """A platform authority, acme's agent serving mutual TLS with acme's certificate, a mutual
    TLS telemetry server, and a certificate of its own organization's center for each actor."""
    from agent.certificate import make_request, store
    from agent.config import AgentConfig, PoolConfig
    from agent.server import build_server as build_agent
    from agent.workloads import WorkloadSpec
    from registry import certificates
    from rpckit.tls import CertFiles
    from tests.factories import CenterFactory
    from verification.rpc.telemetry import build_telemetry_server

    settings.PLATFORM_TLS_DIR = str(tmp_path / "platform")
    settings.PLATFORM_CA_KEY_FILE = settings.PLATFORM_CA_CERT_FILE = ""
    certificates.ensure_development_tls(tmp_path / "platform")

    def issue(center: Center, name: str) -> Any:
        key_pem, csr = make_request(center.national_id)
        row, bundle = certificates.center_certificate_issue(
            center=center, actor=None, csr_pem=csr.decode(), door="api"
        )
        store(
            tmp_path / name, key_pem=key_pem, cert_pem=row.certificate_pem.encode(), ca_pem=bundle
        )
        return CertFiles.in_dir(tmp_path / name, "agent")

    acme_files = issue(world.active.center, "acme")
    own = {"carol": issue(CenterFactory(operator=rival), "rival")}
    own["rita"] = own["carol"]
    own["dave"] = own["carol"]  # an AI firm has no center: it could only steal one
    agent = build_agent(
        "127.0.0.1:0",
        agent_config=AgentConfig(
            agent_id="s1-acme",
            port=0,
            pools=(PoolConfig(key="nvidia-a100-80g", accelerator_model="nvidia-a100-80g"),),
            workload_startup_seconds=0.0,
            grace_seconds=0.0,
            tls_dir=str(tmp_path / "acme"),
        ),
    )
    agent.workloads.start(WorkloadSpec("s1-acme", "nvidia-a100-80g", 1, "", "", 3600))
    telemetry = build_telemetry_server("127.0.0.1:0", max_workers=4)
    yield MtlsDoor(telemetry.port, agent.port, agent, own, acme_files)
    agent.stop(grace=0).wait()
    telemetry.stop(grace=0).wait()


def run_mtls(w: World, t: Tally, door: MtlsDoor) -> None:
    """The mutual TLS door: each foreign actor holds a certificate of its own organization's
    center (and its own token) and tries acme's heartbeats and acme's agent. Heartbeats for
    acme's pools with a foreign center's certificate are PERMISSION_DENIED (the certificate's
    center is not the pool's), whoever the token belongs to; every Agent method called with a
    center's certificate is PERMISSION_DENIED (only the platform may call an agent)."""
    from rpckit.tls import PLATFORM_DNS_NAME, center_dns_name, channel_credentials, name_options

    tokens = {
        name: registry_services.token_create(user=w.users[name], name="s1-mtls")[1]
        for name in ("alice", "carol", "rita", "dave")
    }
    actors = {"other_admin": "carol", "other_member": "rita", "cross": "dave"}
    for role, actor in actors.items():
        credentials = channel_credentials(door.files[actor])
        with grpc.secure_channel(
            f"127.0.0.1:{door.telemetry_port}", credentials, options=name_options(PLATFORM_DNS_NAME)
        ) as channel:
            stub = agent_pb2_grpc.TelemetryStub(channel)
            for pool in (w.draft, w.active):
                request = agent_pb2.SendHeartbeatRequest(
                    agent_id="probe",
                    pools=[
                        agent_pb2.PoolHeartbeat(
                            pool_national_id=pool.national_id,
                            utilization=0.9,
                            accelerators_healthy=1,
                            accelerators_busy=1,
                        )
                    ],
                )
                # With the actor's own token, and with acme's (a stolen token is not enough).
                for token in (tokens[actor], tokens["alice"]):
                    t.case("mtls", "heartbeat", "Telemetry.SendHeartbeat")
                    before = snapshot()
                    code, answer = _grpc_call(stub, "SendHeartbeat", request, token)
                    changed = _diff(before, snapshot())
                    where = f"mTLS Telemetry {pool.national_id} as {actor} ({role})"
                    if changed:
                        t.mutated.append(f"{where}: {changed}")
                    if code != grpc.StatusCode.PERMISSION_DENIED:
                        t.leaked.append(f"{where}: {code} {answer}")
                    elif not changed:
                        t.refused += 1
        acme_center = w.active.center.national_id
        with grpc.secure_channel(
            f"127.0.0.1:{door.agent_port}",
            credentials,
            options=name_options(center_dns_name(acme_center)),
        ) as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            for method in agent_pb2.DESCRIPTOR.services_by_name["Agent"].methods:
                if method.name not in AGENT_REQUESTS:
                    t.unlisted.append(f"gRPC Agent.{method.name}")
                    continue
                t.case("mtls", "agent", f"Agent.{method.name}")
                code, answer = _grpc_call(stub, method.name, AGENT_REQUESTS[method.name](), None)
                where = f"mTLS Agent.{method.name} of {acme_center} as {actor} ({role})"
                if code != grpc.StatusCode.PERMISSION_DENIED:
                    t.leaked.append(f"{where}: {code} {answer}")
                else:
                    t.refused += 1
    # Positive controls: acme's own certificate and token; the platform calling acme's agent.
    with grpc.secure_channel(
        f"127.0.0.1:{door.telemetry_port}",
        channel_credentials(door.acme_files),
        options=name_options(PLATFORM_DNS_NAME),
    ) as channel:
        request = agent_pb2.SendHeartbeatRequest(
            agent_id="s1-acme",
            pools=[
                # Every accelerator healthy: a short count would degrade the pool (and its
                # webhook delivery would then change rows while the portal door is checked).
                agent_pb2.PoolHeartbeat(
                    pool_national_id=w.active.national_id,
                    accelerators_healthy=w.active.accelerators,
                )
            ],
        )
        code, _ = _grpc_call(
            agent_pb2_grpc.TelemetryStub(channel), "SendHeartbeat", request, tokens["alice"]
        )
        assert code == grpc.StatusCode.OK, code
    assert door.agent.workloads.get("s1-acme").spec.workload_id == "s1-acme"
    assert door.agent.workloads.busy("nvidia-a100-80g") == 1  # nobody stopped or started one


# --- portal -----------------------------------------------------------------------------------


def portal_patterns() -> list[tuple[str, str, list[str]]]:
    """(route, url name, parameter names) of every portal pattern (not admin, not the API)."""
    out: list[tuple[str, str, list[str]]] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if route.startswith(("admin/", "api/")):
                continue
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif isinstance(p, URLPattern):
                out.append((route, p.name or "", list(p.pattern.converters)))

    walk(get_resolver().url_patterns, "")
    return out


def run_portal(w: World, t: Tally) -> None:
    clients: dict[str, Client] = {}
    for name in _all_actor_names():
        clients[name] = Client()
        if name != "anon":
            clients[name].force_login(
                w.users[name], backend="django.contrib.auth.backends.ModelBackend"
            )
    seen: set[str] = set()
    # Pages without an object parameter: none may show A's objects, whatever the query.
    for route, name, params in portal_patterns():
        if params or name in PORTAL_NOT_PAGES or route in seen:
            continue
        seen.add(route)
        for actor in _all_actor_names():
            if actor in ("alice", "dave"):
                continue
            for query in PORTAL_WIDENING(w):
                t.case("portal", "pool", f"GET {name}")
                response = clients[actor].get(f"/{route}?{query}")
                found = _leaks(w, response.content) if response.status_code < 300 else []
                if found or response.status_code >= 500:
                    t.leaked.append(f"portal GET /{route}?{query} as {actor}: {found}")
                else:
                    t.refused += 1
    for route, name, params in portal_patterns():
        if not params or route in seen:
            continue
        seen.add(route)  # the first pattern of a route is the one that serves it
        if name not in PORTAL_OBJECT:
            t.unlisted.append(f"portal {name} /{route}")
            continue
        obj = PORTAL_OBJECT[name]
        owner, actors = OWNERS[obj]
        param = params[0]
        url = "/" + route.replace(f"<str:{param}>", w.refs[obj])
        missing = "/" + route.replace(f"<str:{param}>", NONEXISTENT.get(param, "zz-none-s1"))
        for method in ("GET", "POST"):
            for role, actor in actors.items():
                actor = actor or "anon"
                t.case("portal", obj, f"{method} {name}")
                client = clients[actor]
                before = snapshot()
                response = getattr(client, method.lower())(
                    url, PORTAL_POST if method == "POST" else None
                )
                changed = _diff(before, snapshot())
                control = getattr(client, method.lower())(
                    missing, PORTAL_POST if method == "POST" else None
                )
                where = f"portal {method} {url} as {actor} ({role})"
                if changed:
                    t.mutated.append(f"{where}: {changed}")
                code = response.status_code
                refused = (
                    code == control.status_code
                    and (code >= 400 or (role == "anon" and code == 302))
                    and (role != "other_admin" or code in (404, 405))
                    and not _leaks(w, response.content if code != 302 else b"", w.refs[obj])
                )
                if not refused:
                    t.leaked.append(f"{where}: {code} (nonexistent: {control.status_code})")
                elif not changed:
                    t.refused += 1


# --- the host operator and a firm's booking ---------------------------------------------------


def run_host_writes(w: World, t: Tally, broker_port: int) -> None:
    """The operator whose pool a booking runs on reads it (without its specification) but never
    changes it: cancel and confirm belong to the firm, at every door."""
    alice = w.users["alice"]
    ref = w.refs["booking"]
    api = _api_client(alice)
    portal = Client()
    portal.force_login(alice, backend="django.contrib.auth.backends.ModelBackend")
    _, raw = registry_services.token_create(user=alice, name="s1-host")
    calls: list[tuple[str, Callable[[], int | grpc.StatusCode]]] = [
        *(
            (f"REST POST {verb}", lambda v=verb: _rest_call(
                api, "POST", f"/api/v1/bookings/{ref}/{v}/", WRITE_BODY
            ).status_code)
            for verb in ("cancel", "confirm")
        ),
        ("portal POST booking-cancel",
         lambda: portal.post(f"/bookings/{ref}/cancel/", PORTAL_POST).status_code),
    ]  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{broker_port}") as channel:
        stub = broker_pb2_grpc.BrokerStub(channel)
        for name in ("CancelBooking", "ConfirmBooking"):
            calls.append(
                (
                    f"gRPC {name}",
                    lambda n=name: _grpc_call(stub, n, BROKER_METHODS[n](w, ref), raw)[0],
                )
            )
        for what, call in calls:
            t.case(what.split()[0].lower(), "booking", f"host {what}")
            before = snapshot()
            code = call()
            changed = _diff(before, snapshot())
            where = f"{what} {ref} as alice (host operator)"
            if changed:
                t.mutated.append(f"{where}: {changed}")
            if code not in (403, 404, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                t.leaked.append(f"{where}: {code}")
            elif not changed:
                t.refused += 1


# --- the matrix -------------------------------------------------------------------------------


def test_tenant_isolation_matrix(
    world: World, grpc_servers: tuple[int, int], mtls_door: MtlsDoor
) -> None:
    tally = Tally()
    run_rest(world, tally)
    run_grpc(world, tally, *grpc_servers)
    run_host_writes(world, tally, grpc_servers[0])
    run_mtls(world, tally, mtls_door)
    run_portal(world, tally)
    figure(
        "S1.tenant_matrix",
        doors=4,
        objects=len(tally.objects),
        methods=len(tally.methods),
        actors=4,
        cases=tally.cases,
        refused=tally.refused,
        leaked=len(tally.leaked),
        mutated=len(tally.mutated),
        unlisted_endpoints=len(tally.unlisted),
    )
    assert tally.unlisted == [], "\n".join(tally.unlisted)
    assert tally.leaked == [], "\n".join(tally.leaked)
    assert tally.mutated == [], "\n".join(tally.mutated)
    assert tally.refused == tally.cases
