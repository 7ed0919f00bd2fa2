"""The booking ledger against a simple model, step by step (hypothesis stateful testing).

A firm books (from a specification or a chosen option, held or not), confirms, cancels, lets
holds lapse, runs and ends workloads early, while an operator shrinks and grows pools and takes
them offline (their bookings are re-placed) and the clock moves. The model is a list of bookings
with their windows, parts and statuses; after every step the database must agree with it:

- every slot counter equals the sum of the bookings that hold that slot (a reserving booking
  holds its whole window; an ended one the slots before its end, which it used);
- no slot from the current one on is reserved beyond the pool's size, and the oversell checker
  reports exactly the pools the model says are over (only a past window can be, after a shrink);
- no booking starts before the time it was made;
- a hold never becomes a booking that runs unless the firm confirmed it;
- spot bookings count in ``spot_reserved`` too, firm bookings never exceed a pool (the firm
  oversell checker agrees), and a firm booking that does not fit preempts spot bookings that
  make room, never one more than needed;
- a resold booking (whole, or its later part) changes hands without moving a counter.

``make test`` runs a few derandomized examples on PostgreSQL and, in a subprocess, on SQLite
(``make run``'s database). ``LEDGER_STATE_EXAMPLES=2000`` runs a long random search instead.
The mutation controls at the end break the ledger on purpose and require this machine to notice.
"""

from __future__ import annotations
import __future__

import datetime as dt
import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from brokers import ledger, market, services
from brokers.choices import RESERVING_STATUSES, BookingStatus, EventKind
from brokers.errors import CapacityExhausted
from brokers.models import Booking, PoolSlot
from brokers.placement import WorkloadSpec
from registry import selectors as registry_selectors
from registry.choices import Status
from registry.models import Center, Pool
from tests.brokers.conftest import next_hour
from tests.factories import OrganizationFactory, UserFactory

A100 = "nvidia-a100-80g"
PER_NODE = 4
SLOT = dt.timedelta(minutes=15)
ACTIVE = {BookingStatus.DISPATCHING, BookingStatus.RUNNING}
# Statuses a booking reaches only through a confirm (or by being booked unheld).
CONFIRMED_ONLY = {
    BookingStatus.CONFIRMED,
    BookingStatus.DISPATCHING,
    BookingStatus.RUNNING,
    BookingStatus.FINISHED,
}
LONG_RUN = int(os.environ.get("LEDGER_STATE_EXAMPLES", "0"))


@dataclass
class Clock:
    """The broker's notion of now while the machine runs (``brokers.services._now``)."""

    now: dt.datetime = field(default_factory=next_hour)


@dataclass
class Context:
    """What the machine needs from pytest: the firm's user, a pool maker, the clock."""

    actor: Any
    buyer: Any
    operator: Any
    make_pool: Callable[..., Pool]
    clock: Clock


@dataclass
class Model:
    """One booking as the model sees it."""

    pk: int
    parts: dict[int, int]
    start: dt.datetime
    end: dt.datetime
    status: str
    made_at: dt.datetime
    # Booked held and never confirmed by a confirm (a re-placed hold inherits it).
    unconfirmed_hold: bool
    # When it stopped reserving: the slots from then on were given back.
    ended_at: dt.datetime | None = None
    # A spot booking (counted in ``spot_reserved`` too; may be preempted).
    spot: bool = False

    def slots(self) -> Iterator[dt.datetime]:
        """The slots this booking holds now."""
        first_free = None
        if self.status not in RESERVING_STATUSES:
            assert self.ended_at is not None
            if self.ended_at < self.end:
                first_free = ledger.slot_bounds(max(self.start, self.ended_at), self.end)[0]
        for slot in ledger.slot_starts(self.start, self.end):
            if first_free is None or slot < first_free:
                yield slot


class LedgerMachine(RuleBasedStateMachine):
    ctx: ClassVar[Context]
    # The market's rules (spot, preemption, resale); off for the mutations of the ledger's
    # older rules, whose search they would dilute.
    market: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = self.ctx.clock
        self.clock.now = next_hour()
        self.pools: list[Pool] = [
            self.ctx.make_pool(
                self.ctx.operator, size=2 * PER_NODE, per_node=PER_NODE, price=f"{5 + 2 * i}.00"
            )
            for i in range(3)
        ]
        self.size = {p.pk: 2 * PER_NODE for p in self.pools}
        self.active = {p.pk: True for p in self.pools}
        self.bookings: dict[int, Model] = {}

    # --- the model's arithmetic ----------------------------------------------------------------

    def counters(
        self,
        *,
        spot_only: bool = False,
        firm_only: bool = False,
        without: frozenset[int] = frozenset(),
    ) -> dict[tuple[int, dt.datetime], int]:
        out: dict[tuple[int, dt.datetime], int] = {}
        for b in self.bookings.values():
            if (spot_only and not b.spot) or (firm_only and b.spot) or b.pk in without:
                continue
            for slot in b.slots():
                for pool_id, n in b.parts.items():
                    out[pool_id, slot] = out.get((pool_id, slot), 0) + n
        return out

    def fits(
        self,
        parts: dict[int, int],
        start: dt.datetime,
        end: dt.datetime,
        *,
        firm_only: bool = False,
        without: frozenset[int] = frozenset(),
    ) -> bool:
        counters = self.counters(firm_only=firm_only, without=without)
        return all(
            self.active[pool_id] and counters.get((pool_id, slot), 0) + n <= self.size[pool_id]
            for pool_id, n in parts.items()
            for slot in ledger.slot_starts(start, end)
        )

    def take_preemptions(self, parts: dict[int, int], start: dt.datetime, end: dt.datetime) -> None:
        """Spot bookings the broker preempted for a firm booking of ``parts``: they made the
        room it needed, and each of them was needed (never more than needed)."""
        gone = dict(Booking.objects.filter(pk__in=list(self.bookings)).values_list("pk", "status"))
        victims = frozenset(
            pk
            for pk, b in self.bookings.items()
            if gone[pk] == BookingStatus.PREEMPTED and b.status != BookingStatus.PREEMPTED
        )
        if not victims:
            return
        assert all(
            self.bookings[pk].spot and self.bookings[pk].status in RESERVING_STATUSES
            for pk in victims
        ), "a firm booking was preempted"
        assert not self.fits(parts, start, end), "preempted though it fitted"
        assert self.fits(parts, start, end, without=victims), "preempted too little"
        for pk in victims:
            assert not self.fits(parts, start, end, without=victims - {pk}), (
                "preempted more than needed"
            )
        for pk in victims:
            self.end(self.bookings[pk], BookingStatus.PREEMPTED)

    def oversold(self, *, firm_only: bool = False) -> dict[int, int]:
        """What the oversell checker must say: reserving bookings over a pool's size now."""
        out: dict[int, int] = {}
        for pool in self.pools:
            edges = sorted(
                (t, sign * b.parts[pool.pk])
                for b in self.bookings.values()
                if b.status in RESERVING_STATUSES
                and pool.pk in b.parts
                and not (firm_only and b.spot)
                for t, sign in ((b.start, 1), (b.end, -1))
            )
            used = peak = 0
            for i, (t, d) in enumerate(edges):
                used += d
                if i + 1 == len(edges) or edges[i + 1][0] != t:
                    peak = max(peak, used)
            if peak > self.size[pool.pk]:
                out[pool.pk] = peak - self.size[pool.pk]
        return out

    def end(self, b: Model, status: str) -> None:
        b.status = status
        b.ended_at = self.clock.now

    def pick(self, index: int, statuses: set[str] | None = None) -> Model | None:
        found = [b for b in self.bookings.values() if statuses is None or b.status in statuses]
        return found[index % len(found)] if found else None

    def adopt(self, booking: Booking, *, unconfirmed_hold: bool) -> Model:
        """Take a booking the broker made (from a specification, or a re-placement) into the
        model, checking it is one the model would have allowed."""
        parts: dict[int, int] = {}
        for a in booking.allocations.all():
            assert (a.start, a.end) == (booking.window_start, booking.window_end)
            parts[a.pool_id] = parts.get(a.pool_id, 0) + a.accelerators
        assert sum(parts.values()) == booking.accelerators
        if booking.booking_class_id != "spot":
            self.take_preemptions(parts, booking.window_start, booking.window_end)
        assert self.fits(parts, booking.window_start, booking.window_end), "booked beyond room"
        b = Model(
            pk=booking.pk,
            parts=parts,
            start=booking.window_start,
            end=booking.window_end,
            status=booking.status,
            made_at=self.clock.now,
            unconfirmed_hold=unconfirmed_hold,
            spot=booking.booking_class_id == "spot",
        )
        self.bookings[b.pk] = b
        return b

    def spec(
        self,
        count: int,
        slots: int,
        minutes: int,
        duration: int,
        klass: str = "reserved",
        *,
        split: bool = False,
    ) -> WorkloadSpec:
        return WorkloadSpec(
            accelerator_model=A100,
            count=count,
            earliest_start=self.clock.now + slots * SLOT + dt.timedelta(minutes=minutes),
            duration=dt.timedelta(minutes=duration),
            booking_class=klass if self.market else "reserved",
            # An option over two pools is a split: the spec allows it (the option is held to it).
            allow_split=split,
            max_centers=3 if split else 1,
        )

    # --- rules ---------------------------------------------------------------------------------

    windows = {
        "slots": st.integers(0, 4),
        "minutes": st.sampled_from([0, 0, 7, 14]),
        "duration": st.sampled_from([15, 30, 60, 100]),
        "hold": st.booleans(),
        "klass": st.sampled_from(["reserved", "reserved", "spot"]),
    }

    @rule(
        first=st.integers(0, 2),
        n=st.integers(1, 9),
        second=st.none() | st.tuples(st.integers(1, 2), st.integers(1, 4)),
        **windows,
    )
    def book_an_option(
        self,
        first: int,
        n: int,
        second: tuple[int, int] | None,
        slots: int,
        minutes: int,
        duration: int,
        hold: bool,
        klass: str,
    ) -> None:
        parts = {self.pools[first].pk: n}
        if second is not None:
            parts[self.pools[(first + second[0]) % 3].pk] = second[1]
        spec = self.spec(sum(parts.values()), slots, minutes, duration, klass, split=True)
        # A firm booking fits where the firm part leaves room (spot bookings make way).
        expected = self.fits(parts, spec.start, spec.end, firm_only=klass != "spot")
        nids = {p.pk: p.national_id for p in self.pools}
        try:
            booking = services.booking_create(
                spec=spec,
                option=[(nids[pk], n) for pk, n in parts.items()],
                idempotency_key=uuid.uuid4().hex,
                actor=self.ctx.actor,
                door="api",
                hold=hold,
            )
        except (CapacityExhausted, ValidationError):
            assert not expected, f"refused, though {parts} fits over {spec.start}+{duration}m"
            return
        assert expected, f"booked {parts} over {spec.start}+{duration}m, which does not fit"
        assert booking.status == (BookingStatus.HELD if hold else BookingStatus.CONFIRMED)
        assert (booking.window_start, booking.window_end) == (spec.start, spec.end)
        assert self.adopt(booking, unconfirmed_hold=hold).parts == parts

    @rule(count=st.integers(1, 12), **windows)
    def book_a_specification(
        self, count: int, slots: int, minutes: int, duration: int, hold: bool, klass: str
    ) -> None:
        spec = self.spec(count, slots, minutes, duration, klass)
        try:
            booking = services.booking_create(
                spec=spec,
                idempotency_key=uuid.uuid4().hex,
                actor=self.ctx.actor,
                door="api",
                hold=hold,
            )
        except CapacityExhausted:
            # Whether placement should have found room is its own property test's business;
            # here a refusal must only leave the ledger as it was (the invariants check it).
            return
        assert booking.window_start >= self.clock.now
        assert booking.window_end - booking.window_start == spec.duration
        assert booking.status == (BookingStatus.HELD if hold else BookingStatus.CONFIRMED)
        self.adopt(booking, unconfirmed_hold=hold)

    @precondition(lambda self: self.bookings)
    @rule(index=st.integers(0, 99))
    def confirm(self, index: int) -> None:
        b = self.pick(index)
        assert b is not None
        booking = Booking.objects.get(pk=b.pk)
        if b.status in CONFIRMED_ONLY | {BookingStatus.HELD}:
            assert services.booking_confirm(booking=booking, actor=self.ctx.actor, door="api")
            if b.status == BookingStatus.HELD:
                b.status = BookingStatus.CONFIRMED
                b.unconfirmed_hold = False
        else:
            with pytest.raises(ValidationError):
                services.booking_confirm(booking=booking, actor=self.ctx.actor, door="api")

    @precondition(lambda self: self.bookings)
    @rule(index=st.integers(0, 99))
    def cancel(self, index: int) -> None:
        b = self.pick(index)
        assert b is not None
        booking = Booking.objects.get(pk=b.pk)
        if b.status in RESERVING_STATUSES:
            services.booking_cancel(booking=booking, actor=self.ctx.actor, door="api")
            self.end(b, BookingStatus.CANCELLED)
        elif b.status == BookingStatus.CANCELLED:
            services.booking_cancel(booking=booking, actor=self.ctx.actor, door="api")
        else:
            with pytest.raises(ValidationError):
                services.booking_cancel(booking=booking, actor=self.ctx.actor, door="api")

    @precondition(lambda self: any(b.status == BookingStatus.HELD for b in self.bookings.values()))
    @rule(index=st.integers(0, 99))
    def let_a_hold_lapse(self, index: int) -> None:
        b = self.pick(index, {BookingStatus.HELD})
        assert b is not None
        # Its time passes on the database's clock, which holds are measured on.
        Booking.objects.filter(pk=b.pk).update(
            hold_expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
        )
        assert services.bookings_expire_holds() == 1
        self.end(b, BookingStatus.CANCELLED)

    @precondition(
        lambda self: any(b.status == BookingStatus.CONFIRMED for b in self.bookings.values())
    )
    @rule(index=st.integers(0, 99))
    def start_a_workload(self, index: int) -> None:
        b = self.pick(index, {BookingStatus.CONFIRMED})
        assert b is not None
        booking = Booking.objects.get(pk=b.pk)
        for to, allowed in (
            (BookingStatus.DISPATCHING, {BookingStatus.CONFIRMED}),
            (BookingStatus.RUNNING, {BookingStatus.DISPATCHING}),
        ):
            assert services.booking_record(
                booking=booking, kind=EventKind.STATUS, message=to, to=to, allowed_from=allowed
            )
        b.status = BookingStatus.RUNNING

    @precondition(lambda self: any(b.status in ACTIVE for b in self.bookings.values()))
    @rule(index=st.integers(0, 99), outcome=st.sampled_from(["finished", "failed"]))
    def end_a_workload(self, index: int, outcome: str) -> None:
        b = self.pick(index, ACTIVE)
        assert b is not None
        booking = Booking.objects.get(pk=b.pk)
        for _ in range(2):  # reported twice (two followers): moves and gives back once
            services.booking_record(
                booking=booking,
                kind=EventKind.STATUS,
                message=outcome,
                to=outcome,
                allowed_from=ACTIVE,
            )
        self.end(b, outcome)

    @rule(index=st.integers(0, 2), nodes=st.integers(1, 4))
    def resize_a_pool(self, index: int, nodes: int) -> None:
        pool = self.pools[index]
        size = nodes * PER_NODE
        now_slot = ledger.slot_bounds(self.clock.now, self.clock.now)[0]
        refused = any(
            n > size
            for (pk, slot), n in self.counters().items()
            if pk == pool.pk and slot >= now_slot
        )
        try:
            # What the pool's post_save receiver does in the pool's own transaction.
            with transaction.atomic():
                Pool.objects.filter(pk=pool.pk).update(nodes=nodes)
                services.pool_capacity_sync(pool_id=pool.pk, capacity=size)
        except ValidationError as exc:
            assert refused, f"a shrink to {size} was refused: {exc}"
            assert "pool.in_use" in str(exc)
        else:
            assert not refused, f"a shrink to {size} below what is booked was taken"
            self.size[pool.pk] = size
        assert Pool.objects.get(pk=pool.pk).accelerators == self.size[pool.pk]

    @rule(minutes=st.integers(1, 60))
    def move_the_clock(self, minutes: int) -> None:
        self.clock.now += dt.timedelta(minutes=minutes)

    @precondition(lambda self: sum(self.active.values()) >= 2)
    @rule(index=st.integers(0, 2))
    def take_a_pool_offline(self, index: int) -> None:
        """A pool goes offline: its bookings are flagged, and those that have not started
        running are re-placed elsewhere (what the re-placement task does) or fail."""
        pool = Pool.objects.select_related("center").get(pk=self.pools[index].pk)
        if not self.active[pool.pk]:
            return
        Pool.objects.filter(pk=pool.pk).update(status=Status.OFFLINE)
        self.active[pool.pk] = False
        flagged = services.booking_flag_pool(
            pool_id=pool.pk, to_status=Status.OFFLINE, reason="power cut"
        )
        expected = {
            b.pk
            for b in self.bookings.values()
            if b.status in RESERVING_STATUSES and pool.pk in b.parts and b.end > self.clock.now
        }
        assert {b.pk for b in flagged} == expected
        for booking in flagged:
            b = self.bookings[booking.pk]
            if b.status not in (BookingStatus.CONFIRMED, BookingStatus.HELD):
                continue
            was = b.status
            hold_expires_at = booking.hold_expires_at
            new = services.booking_replace(
                booking=booking, exclude_center=pool.center.national_id, reason="offline"
            )
            if new is None:
                self.end(b, BookingStatus.FAILED)
                continue
            self.end(b, BookingStatus.REPLACED)
            new.refresh_from_db()
            # A hold moves as a hold with its expiry; a confirmed booking (once held, its old
            # expiry still on the row) moves as a confirmed one, without an expiry.
            moved_expiry = hold_expires_at if was == BookingStatus.HELD else None
            assert new.status == was and new.hold_expires_at == moved_expiry
            assert new.window_start == max(b.start, self.clock.now)
            assert new.window_end - new.window_start == b.end - b.start
            assert all(a.pool.center_id != pool.center_id for a in new.allocations.all())
            self.adopt(new, unconfirmed_hold=b.unconfirmed_hold)

    @precondition(lambda self: not all(self.active.values()))
    @rule(index=st.integers(0, 2))
    def bring_a_pool_back(self, index: int) -> None:
        pool = self.pools[index]
        Pool.objects.filter(pk=pool.pk).update(status=Status.ACTIVE)
        self.active[pool.pk] = True

    @precondition(
        lambda self: (
            self.market and any(b.status == BookingStatus.CONFIRMED for b in self.bookings.values())
        )
    )
    @rule(index=st.integers(0, 99), later=st.integers(0, 3))
    def resell(self, index: int, later: int) -> None:
        """The firm offers a confirmed booking (or its part from a later slot) and another
        firm buys it: the allocations change hands, the counters stay."""
        b = self.pick(index, {BookingStatus.CONFIRMED})
        assert b is not None
        booking = Booking.objects.get(pk=b.pk)
        # A bought booking is the buyer's: it may sell it on, to the first firm.
        seller, buyer = self.ctx.actor, self.ctx.buyer
        if booking.organization_id != registry_selectors.organization_of(seller).pk:
            seller, buyer = buyer, seller
        start = b.start
        if later:
            start = ledger.slot_bounds(b.start, b.start)[0] + later * SLOT
        try:
            offer = market.offer_create(
                booking=booking,
                actor=seller,
                door="api",
                price=Decimal("7.50"),
                start=None if not later else start,
            )
        except ValidationError:
            assert b.spot or b.start <= self.clock.now or (later and not b.start < start < b.end)
            return
        assert not b.spot and b.start > self.clock.now
        bought = market.offer_buy(offer=offer, actor=buyer, door="api")
        if start == b.start:
            b.status, b.ended_at = BookingStatus.SOLD, b.start
        else:
            b.end = start
        self.adopt(bought, unconfirmed_hold=False)

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        pool_ids = [p.pk for p in self.pools]
        rows = PoolSlot.objects.filter(pool_id__in=pool_ids).values_list(
            "pool_id", "slot_start", "capacity", "reserved", "spot_reserved"
        )
        counters = self.counters()
        found = {(pk, slot): reserved for pk, slot, _, reserved, _ in rows if reserved}
        assert found == {k: n for k, n in counters.items() if n}, "slot counters drifted"
        spot = {(pk, slot): n for pk, slot, _, _, n in rows if n}
        assert spot == {k: n for k, n in self.counters(spot_only=True).items() if n}, (
            "spot counters drifted"
        )
        now_slot = ledger.slot_bounds(self.clock.now, self.clock.now)[0]
        for pk, slot, capacity, reserved, spot_reserved in rows:
            assert 0 <= spot_reserved <= reserved <= capacity
            if slot >= now_slot:
                assert reserved <= self.size[pk], f"pool {pk} over its size at {slot}"
        oversold = {pk: n for pk, n in ledger.oversold_pools().items() if pk in pool_ids}
        assert oversold == self.oversold()
        firm = {pk: n for pk, n in ledger.oversold_pools(firm_only=True).items() if pk in pool_ids}
        assert firm == self.oversold(firm_only=True)

        statuses = dict(
            Booking.objects.filter(allocations__pool_id__in=pool_ids)
            .distinct()
            .values_list("pk", "status")
        )
        assert statuses == {pk: b.status for pk, b in self.bookings.items()}
        for b in self.bookings.values():
            assert b.start >= b.made_at, f"booking {b.pk} starts in the past"
            if b.unconfirmed_hold:
                assert statuses[b.pk] not in CONFIRMED_ONLY, f"hold {b.pk} confirmed by itself"

    def teardown(self) -> None:
        # Each example starts from empty pools: remove what it made (inside the test's own
        # transaction, which pytest rolls back at the end).
        pool_ids = [p.pk for p in self.pools]
        with transaction.atomic():
            Booking.objects.filter(allocations__pool_id__in=pool_ids).delete()
            PoolSlot.objects.filter(pool_id__in=pool_ids).delete()
            centers = [p.center_id for p in self.pools]
            Pool.objects.filter(pk__in=pool_ids).delete()
            Center.objects.filter(pk__in=centers).delete()


def machine_settings(*, examples: int, steps: int, shrink: bool = True) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        derandomize=not LONG_RUN,
        database=None,
        deadline=None,
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])],
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def machine(
    dave: Any, acme: Any, active_pool: Any, monkeypatch: pytest.MonkeyPatch
) -> type[LedgerMachine]:
    clock = Clock()
    monkeypatch.setattr(services, "_now", lambda: clock.now)
    buyer = UserFactory(membership__organization=OrganizationFactory(kind="ai_firm"))
    LedgerMachine.ctx = Context(
        actor=dave, buyer=buyer, operator=acme, make_pool=active_pool, clock=clock
    )
    return LedgerMachine


@pytest.mark.django_db
def test_the_ledger_keeps_its_invariants_step_by_step(machine: type[LedgerMachine]) -> None:
    assert connection.vendor == os.environ.get("LEDGER_STATE_VENDOR", connection.vendor)
    if LONG_RUN:
        chosen = machine_settings(examples=LONG_RUN, steps=60)
    elif connection.vendor == "postgresql":
        chosen = machine_settings(examples=15, steps=30)
    else:
        chosen = machine_settings(examples=6, steps=30)
    run_state_machine_as_test(machine, settings=chosen)


def test_the_same_machine_holds_on_sqlite(tmp_path: Path) -> None:
    """``make run``'s database runs the same SQL: the same machine, on SQLite."""
    if connection.vendor != "postgresql":
        pytest.skip("already on SQLite")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "LEDGER_STATE_VENDOR": "sqlite",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            f"{__file__}::test_the_ledger_keeps_its_invariants_step_by_step",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


# --- mutation controls -----------------------------------------------------------------------


def mutate(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str, old: str, new: str
) -> None:
    """Replace ``module.name`` by a copy whose source has ``old`` replaced with ``new``."""
    source = textwrap.dedent(inspect.getsource(getattr(module, name)))
    assert source.count(old) == 1, f"the mutation no longer applies to {name}: {old!r}"
    code = compile(
        source.replace(old, new),
        inspect.getsourcefile(module) or name,
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    namespace: dict[str, Any] = {}
    exec(code, vars(module), namespace)
    monkeypatch.setattr(module, name, namespace[name])


def release_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ledger.release

    def twice(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        original(*args, **kwargs)

    monkeypatch.setattr(ledger, "release", twice)


def no_capacity_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard lives in two places: ``ledger.reserve`` (re-placement, firms with a quota,
    SQLite) and ``broker_book`` (every other booking on PostgreSQL); both lose it. The
    function's replacement is undone with the test's transaction."""
    mutate(
        monkeypatch,
        ledger,
        "reserve",
        '"WHERE brokers_poolslot.reserved + excluded.reserved <= excluded.capacity"',
        '""',
    )
    if connection.vendor == "postgresql":
        function = importlib.import_module(
            "brokers.migrations.0006_book_function_and_notify"
        ).BOOK_FUNCTION
        guard = "WHERE s.reserved + excluded.reserved <= excluded.capacity"
        assert function.count(guard) == 1, "the mutation no longer applies to broker_book"
        with connection.cursor() as cur:
            cur.execute(function.replace(guard, ""))


MUTATIONS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "reserve without its capacity guard": no_capacity_guard,
    "release twice": release_twice,
    "release the past of a window too": lambda mp: mutate(
        mp, services, "_release", "max(booking.window_start, now)", "booking.window_start"
    ),
    "a workload that ends keeps its slots": lambda mp: mutate(
        mp,
        services,
        "booking_record",
        "if was in RESERVING_STATUSES and to not in RESERVING_STATUSES:",
        "if False:",
    ),
    "a re-placed hold is confirmed": lambda mp: mutate(
        mp, services, "booking_replace", "hold_until=hold_until,", "hold_until=None,"
    ),
    "a spot booking counted as firm": lambda mp: mutate(
        mp, services, "_book_option", "spot=cls.preemptible", "spot=False"
    ),
}


MARKET_MUTATIONS = {"a spot booking counted as firm"}


@pytest.mark.django_db
@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_machine_catches_a_broken_ledger(
    mutation: str, machine: type[LedgerMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each mutation breaks one rule of the ledger; the machine must find a violation."""
    MUTATIONS[mutation](monkeypatch)
    monkeypatch.setattr(machine, "market", mutation in MARKET_MUTATIONS)
    with pytest.raises((AssertionError, IntegrityError)):
        run_state_machine_as_test(
            machine, settings=machine_settings(examples=60, steps=30, shrink=False)
        )
