"""What a placement request asks for, and what placement answers."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from brokers import limits
from brokers.choices import BookingClassSlug, LatencyClass
from registry.models.catalog import A100_BF16_DENSE_TFLOPS

MAX_WINDOW = dt.timedelta(seconds=limits.MAX_DURATION_SECONDS)
# A start this far in the past is taken as "now" (clocks of clients and servers disagree a
# little); further back it is refused. ``BROKER_START_GRACE_SECONDS`` overrides it.
DEFAULT_START_GRACE_SECONDS = 120


def start_grace() -> dt.timedelta:
    """How far in the past an ``earliest_start`` may lie and still mean "now"."""
    seconds = getattr(settings, "BROKER_START_GRACE_SECONDS", DEFAULT_START_GRACE_SECONDS)
    return dt.timedelta(seconds=float(seconds))


def past_start_message() -> str:
    """The one refusal of a start in the past: every door (REST, gRPC, portal, CLI) and
    :meth:`WorkloadSpec.validated` say exactly this."""
    grace = int(start_grace().total_seconds())
    return (
        f"The earliest start has passed (more than {grace} s ago): give a time from now on, "
        "or leave it out to start now."
    )


def past_start_error(start: dt.datetime | None, *, now: dt.datetime) -> str | None:
    """The refusal message if ``start`` lies further in the past than the grace, else None
    (no start means now; a naive time is left to the time-zone check)."""
    if start is None or start.tzinfo is None:
        return None
    return past_start_message() if start < now - start_grace() else None


def check_start(start: dt.datetime | None, *, now: dt.datetime | None = None) -> None:
    """``ValidationError`` on ``earliest_start`` for a start in the past (the doors' check)."""
    error = past_start_error(start, now=now or timezone.now())
    if error:
        raise ValidationError({"earliest_start": [error]})


# Prices (and price caps, once validated) are multiples of this.
PRICE_QUANTUM = Decimal("0.0001")


def spot_price(price: Decimal | None, discount_percent: Decimal) -> Decimal | None:
    """The pool's price less its spot discount, to 4 decimals like prices (half to even, the
    rounding the candidate query's cap condition reproduces: :func:`spot_cap_threshold`)."""
    if price is None:
        return None
    return (price * (Decimal(100) - discount_percent) / Decimal(100)).quantize(
        PRICE_QUANTUM, rounding=ROUND_HALF_EVEN
    )


def spot_cap_threshold(cap: Decimal) -> tuple[str, Decimal]:
    """``(operator, bound)`` such that ``spot_price(price, d) <= cap`` exactly when
    ``price * (100 - d) <operator> bound``: the cap condition on the unrounded product, which
    SQL computes exactly (no division), reproducing :func:`spot_price`'s rounding.

    A spot price is a multiple of 0.0001, so it is within the cap when it is at most ``c``, the
    cap rounded down to 0.0001; the product over 100 rounds to ``c`` or below when it is under
    ``c + 0.00005``, and at exactly ``c + 0.00005`` when ``c`` ends in an even digit.
    """
    units = (cap * 10000).to_integral_value(rounding=ROUND_FLOOR)
    bound = (units + Decimal("0.5")) / 100
    return ("<=" if units % 2 == 0 else "<"), bound


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload as an AI firm describes it to the broker.

    Either ``accelerator_model`` (a catalog slug) with ``count`` accelerators, or
    ``a100_equivalents``: any models whose accelerators add up to that many A100s by measured
    performance (``Pool.measured_tflops_per_accelerator``, falling back to the catalog).
    ``gang_size``: accelerators that must start together on one pool (a split never cuts a gang).
    The workload runs ``duration`` somewhere inside ``[earliest_start, latest_end]``; the broker
    books it from ``earliest_start``. ``data_hub``/``data_gb`` say where the input lives, to weigh
    transfer time over ``HubLink``s. ``allow_split`` lets the broker spread it over at most
    ``max_centers`` centers.
    """

    count: int = 0
    accelerator_model: str = ""
    a100_equivalents: float = 0.0
    gang_size: int = 1
    min_accelerators_per_node: int = 0
    interconnect: str = ""
    traits: tuple[str, ...] = ()
    memory_gb_per_accelerator: float = 0.0
    earliest_start: dt.datetime | None = None
    latest_end: dt.datetime | None = None
    duration: dt.timedelta = dt.timedelta(hours=1)
    hubs_allowed: tuple[str, ...] = ()
    hubs_excluded: tuple[str, ...] = ()
    centers_excluded: tuple[str, ...] = ()
    data_hub: str = ""
    data_gb: float = 0.0
    latency_class: str = LatencyClass.TRAINING
    price_cap: Decimal | None = None
    allow_split: bool = False
    max_centers: int = 1
    image: str = ""
    command: str = ""
    # The booking class (``brokers.BookingClass`` slug): reserved, spot or priority.
    booking_class: str = "reserved"
    # A spot booking that is preempted is booked again elsewhere.
    replace_on_preemption: bool = False

    @property
    def start(self) -> dt.datetime:
        assert self.earliest_start is not None
        return self.earliest_start

    @property
    def end(self) -> dt.datetime:
        return self.start + self.duration

    @property
    def hours(self) -> float:
        return self.duration.total_seconds() / 3600

    def validated(self, *, now: dt.datetime) -> WorkloadSpec:
        """A copy with defaults filled (start now) or ``ValidationError`` naming each bad field.

        A start in the past is refused (:func:`past_start_error`); one within the grace is
        moved to ``now``, so the window that placement, the ledger and quotas see is the one
        the workload will really run in.
        """
        errors: dict[str, list[str]] = {}
        asked = self.earliest_start or now
        start = asked
        if start.tzinfo is None:
            errors["earliest_start"] = [limits.NO_ZONE_MESSAGE]
        elif past := past_start_error(start, now=now):
            errors["earliest_start"] = [past]
        else:
            start = max(start, now)
        if bool(self.accelerator_model) == bool(self.a100_equivalents):
            errors["accelerator_model"] = [
                "Give either an accelerator model with a count, or a100_equivalents."
            ]
        if self.accelerator_model and (error := limits.count_error(self.count)):
            errors["count"] = [error]
        if self.a100_equivalents and (
            error := limits.a100_equivalents_error(self.a100_equivalents)
        ):
            errors["a100_equivalents"] = [error]
        if self.gang_size < 1:
            errors["gang_size"] = [limits.AT_LEAST_ONE_MESSAGE]
        elif self.accelerator_model and self.count % self.gang_size:
            errors["gang_size"] = ["The count must be a multiple of the gang size."]
        if self.min_accelerators_per_node < 0:
            errors["min_accelerators_per_node"] = [limits.NEGATIVE_MESSAGE]
        if self.memory_gb_per_accelerator < 0:
            errors["memory_gb_per_accelerator"] = [limits.NEGATIVE_MESSAGE]
        if error := limits.duration_error(self.duration.total_seconds()):
            errors["duration"] = [error]
        elif "earliest_start" not in errors:
            try:
                start + self.duration + MAX_WINDOW
            except OverflowError:
                errors["earliest_start"] = ["Too far in the future."]
        if self.latest_end is not None and "earliest_start" not in errors:
            # Against the start asked for: a start within the grace means "now" as the client
            # saw it, and its window ends as the client computed it.
            if self.latest_end < asked + self.duration:
                errors["latest_end"] = ["The window is shorter than the duration."]
        if self.data_gb < 0:
            errors["data_gb"] = [limits.NEGATIVE_MESSAGE]
        if self.data_gb and not self.data_hub:
            errors["data_hub"] = ["Say which hub holds the data."]
        if self.latency_class not in LatencyClass.values:
            errors["latency_class"] = [f"One of {', '.join(LatencyClass.values)}."]
        if self.price_cap is not None and (not self.price_cap.is_finite() or self.price_cap < 0):
            errors["price_cap"] = ["Must not be negative."]
        if self.max_centers < 1:
            errors["max_centers"] = [limits.AT_LEAST_ONE_MESSAGE]
        if set(self.hubs_allowed) & set(self.hubs_excluded):
            errors["hubs_excluded"] = ["A hub cannot be both allowed and excluded."]
        if self.booking_class not in BookingClassSlug.values:
            errors["booking_class"] = [f"One of {', '.join(BookingClassSlug.values)}."]
        elif self.replace_on_preemption and self.booking_class != BookingClassSlug.SPOT:
            errors["replace_on_preemption"] = ["Only spot bookings are preempted."]
        price_cap = self.price_cap
        if price_cap is not None and "price_cap" not in errors:
            # To 0.0001 like prices, rounded down: the same pools pass (a price is a multiple
            # of 0.0001, and ``spot_cap_threshold`` rounds the cap down too), and the cap reads
            # the same whichever door carried it ("9.50", "9.5"), in placement's sentences too.
            try:
                price_cap = price_cap.quantize(PRICE_QUANTUM, rounding=ROUND_FLOOR)
            except InvalidOperation:
                errors["price_cap"] = ["Too large."]
        if errors:
            raise ValidationError(errors)
        # UTC from here on: PostgreSQL refuses offsets beyond +-15:59, which ISO 8601 allows.
        return dataclasses.replace(
            self,
            price_cap=price_cap,
            earliest_start=start.astimezone(dt.UTC),
            latest_end=self.latest_end.astimezone(dt.UTC) if self.latest_end else None,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form, stored on the booking (and used to re-place it)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, dt.timedelta):
                value = value.total_seconds()
            elif isinstance(value, Decimal):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkloadSpec:
        """Inverse of :meth:`to_json` (unknown keys are a ``ValidationError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValidationError({k: ["Unknown field."] for k in unknown})
        values = dict(data)
        try:
            for key in ("earliest_start", "latest_end"):
                if values.get(key):
                    values[key] = dt.datetime.fromisoformat(values[key])
            if "duration" in values:
                values["duration"] = dt.timedelta(seconds=float(values["duration"]))
            if values.get("price_cap") not in (None, ""):
                values["price_cap"] = Decimal(str(values["price_cap"]))
            else:
                values["price_cap"] = None
        except (ValueError, ArithmeticError) as exc:
            raise ValidationError({"spec": [f"Malformed value: {exc}"]}) from None
        for key in ("traits", "hubs_allowed", "hubs_excluded", "centers_excluded"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A pool that survived the SQL prefilter, with what filters and scorers need."""

    pool_id: int
    national_id: str
    center_id: int
    center_national_id: str
    operator_id: int
    hub: str
    accelerator: str
    accelerators: int
    accelerators_per_node: int
    free: int
    price: Decimal | None
    currency: str
    tflops: float
    memory_gb: float | None
    intra_node_interconnect: str
    inter_node_interconnect: str
    green_power_share: float
    verified_at: dt.datetime | None
    traits: frozenset[str] = frozenset()
    # Spot bookings pay ``price`` less this share (``Pool.spot_discount_percent``).
    spot_discount_percent: Decimal = Decimal(0)

    @property
    def a100_per_accelerator(self) -> float:
        return self.tflops / A100_BF16_DENSE_TFLOPS if self.tflops else 0.0

    def price_for(self, booking_class: str) -> Decimal | None:
        """The price a booking of ``booking_class`` pays per accelerator-hour here: the spot
        price for spot, the pool's price for the other classes."""
        if booking_class == BookingClassSlug.SPOT:
            return spot_price(self.price, self.spot_discount_percent)
        return self.price


@dataclass(frozen=True)
class Rejection:
    """Why a pool cannot take the workload: a stable code and a sentence."""

    pool: str
    reason_code: str
    detail: str


@dataclass(frozen=True)
class OptionPart:
    """One pool's share of an option."""

    pool_id: int
    pool: str
    center: str
    hub: str
    accelerator: str
    accelerators: int
    price_per_accelerator_hour: Decimal | None
    currency: str


@dataclass(frozen=True)
class Preemption:
    """``bookings`` spot bookings holding ``accelerators`` accelerators of ``pool`` that a
    reserved or priority booking takes back."""

    pool: str
    bookings: int
    accelerators: int


@dataclass
class PlacementOption:
    """A way to run the workload: one part per pool, with its cost and why it ranks here."""

    parts: list[OptionPart]
    score: float
    cost: Decimal
    currency: str
    transfer_seconds: float
    green_power_share: float
    explanation: list[str] = field(default_factory=list)
    # Spot bookings this option would preempt, per pool (counts only: they are other firms').
    preemptions: list[Preemption] = field(default_factory=list)
    # A resale offer this option is (buy it with its national id instead of booking).
    offer: str = ""

    @property
    def accelerators(self) -> int:
        return sum(p.accelerators for p in self.parts)


@dataclass
class PlacementResult:
    """Ranked options, every rejection, and counts of pools the SQL prefilter left out."""

    spec: WorkloadSpec
    options: list[PlacementOption]
    rejections: list[Rejection]
    prefiltered: dict[str, int] = field(default_factory=dict)
    candidates_considered: int = 0
