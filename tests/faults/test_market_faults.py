"""Faults in the market: a buyer process killed in the middle of a purchase.

The buyer (a real process on this session's database) takes the offer's lock, writes its new
booking, allocations, events and the offer's ``sold`` mark, and is then held on its quota row
(locked by the test) before it can commit; it is killed there with SIGKILL. PostgreSQL rolls
its transaction back: the offer is open again, the seller still owns the booking, the dead
buyer owns nothing, and the next buyer gets it. Exactly one owner, at every moment.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import textwrap
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from django.db import connection

from brokers import ledger, market, services
from brokers.choices import BookingStatus, OfferStatus
from brokers.models import Booking, Quota, ResaleOffer
from registry import selectors as registry_selectors
from tests.brokers.broker_testing import PYTHON, ROOT, child_env, session_database_url, wait_for
from tests.brokers.conftest import next_hour, spec
from tests.factories import CenterFactory, OrganizationFactory, PoolFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

BUY = """
import django
django.setup()
from brokers import market
from brokers.models import ResaleOffer
from django.contrib.auth import get_user_model
offer = ResaleOffer.objects.get(national_id={offer!r})
print("buying", flush=True)
market.offer_buy(offer=offer, actor=get_user_model().objects.get(pk={user}), door="cli")
print("bought", flush=True)
"""


def _waiting_backends(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%brokers_quota%'"
        ).fetchone()
        return int(row[0]) if row else 0


def test_a_buyer_killed_mid_purchase_leaves_exactly_one_owner(
    dave: Any, acme: Any, settings: Any
) -> None:
    settings.BROKER_DISPATCH = False
    center = CenterFactory(operator=acme, status="active")
    pool = PoolFactory(
        center=center,
        nodes=1,
        accelerators_per_node=8,
        price_per_accelerator_hour="10.00",
        status="active",
    )
    sold = services.booking_create(
        spec=spec(count=4, earliest_start=next_hour() + dt.timedelta(hours=1)),
        idempotency_key="fault-sell",
        actor=dave,
        door="api",
        option=[(pool.national_id, 4)],
    )
    offer = market.offer_create(booking=sold, actor=dave, door="api", price=Decimal("12"))
    doomed = UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))
    doomed_org = registry_selectors.organization_of(doomed)
    Quota.objects.create(organization=doomed_org)  # no limits: only its row lock matters
    dsn = session_database_url().replace("postgres://", "postgresql://", 1)

    with psycopg.connect(dsn) as holder:
        # Hold the buyer's quota row: its purchase stops there, after all its other writes.
        holder.execute(
            "SELECT 1 FROM brokers_quota WHERE organization_id = %s FOR UPDATE", [doomed_org.pk]
        )
        child = subprocess.Popen(
            [PYTHON, "-c", textwrap.dedent(BUY.format(offer=offer.national_id, user=doomed.pk))],
            cwd=ROOT,
            env=child_env(BROKER_DISPATCH="0"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            wait_for(lambda: _waiting_backends(dsn) == 1, timeout=60, what="the buyer mid-purchase")
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
        holder.rollback()
    assert child.returncode == -signal.SIGKILL
    # Its backend finds its client gone and rolls back; nothing it wrote remains.
    wait_for(lambda: _waiting_backends(dsn) == 0, timeout=30, what="the dead buyer's rollback")
    assert not Booking.objects.filter(organization=doomed_org).exists()
    offer.refresh_from_db()
    assert (offer.status, offer.buyer_id, offer.bought_id) == (OfferStatus.OPEN, None, None)
    assert Booking.objects.get(pk=sold.pk).status == BookingStatus.CONFIRMED

    # The next buyer gets it; one owner.
    survivor = UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))
    bought = market.offer_buy(offer=offer, actor=survivor, door="api")
    owners = Booking.objects.filter(
        allocations__pool=pool, status__in=[BookingStatus.CONFIRMED], window_end=sold.window_end
    ).distinct()
    assert [b.pk for b in owners] == [bought.pk]
    assert Booking.objects.get(pk=sold.pk).status == BookingStatus.SOLD
    assert ResaleOffer.objects.get(pk=offer.pk).bought_id == bought.pk
    assert ledger.oversold_pools() == {}
    assert connection.vendor == "postgresql"
