"""The booking ledger: bookings, their allocations on pools, per-slot counters, events, quotas
and usage.

The capacity invariant ("at no instant is a pool reserved beyond its capacity") lives in
``PoolSlot``: one row per pool and time slot, with ``CHECK (0 <= reserved <= capacity)``. Every
booking adds its accelerators to the slots its window covers in one transaction
(``brokers.ledger``), so the database itself refuses an oversell, whichever process writes.
"""

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from brokers.choices import BookingClassSlug, BookingStatus, EventKind, OfferStatus
from registry.models import Organization, Pool


class BookingClass(models.Model):
    """A booking class: how a booking stands when capacity runs short (one row per class).

    ``reserved`` (the default; never preempted), ``spot`` (``preemptible``: cheaper by the pool's
    ``spot_discount_percent``, gives its capacity back when a ``preempts`` booking needs it) and
    ``priority`` (``needs_grant``: only organizations platform staff granted a
    :class:`PriorityGrant`, within its accelerator-hours). Made by migration 0007.
    """

    slug = models.SlugField(max_length=20, unique=True)
    name = models.CharField(max_length=60)
    description = models.CharField(max_length=300, blank=True)
    preemptible = models.BooleanField(default=False)
    preempts = models.BooleanField(default=False)
    needs_grant = models.BooleanField(default=False)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "booking classes"

    def __str__(self) -> str:
        return self.slug


class PriorityGrant(models.Model):
    """Platform staff grant an organization (e.g. a national research programme) the
    ``priority`` class, up to ``accelerator_hours`` over the bookings it makes in that class
    (those that hold or held capacity: cancelled, preempted and lapsed ones give theirs back)."""

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="priority_grant"
    )
    accelerator_hours = models.PositiveIntegerField()
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    note = models.CharField(max_length=200, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"priority grant of {self.organization_id}"

    @property
    def change_log_owner(self) -> Organization:
        return self.organization


class Booking(models.Model):
    """An AI firm's reservation of accelerators over a time window, on one or more pools.

    ``national_id`` (``BK-<yyyymmdd>-<8 hex>``) is the public identifier every door uses and the
    workload id sent to agents. ``spec`` is the workload specification as the firm sent it (only
    the firm and the platform see it). ``idempotency_key`` is unique per organization: a repeated
    request with the same key returns the first booking instead of booking twice.
    """

    national_id = models.CharField(max_length=32, unique=True, editable=False)
    organization = models.ForeignKey(
        Organization, on_delete=models.PROTECT, related_name="bookings"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    door = models.CharField(max_length=10)
    idempotency_key = models.CharField(max_length=100)
    # SHA-256 of the request the key was first used for (``services.request_fingerprint``): the
    # same key with another request is refused. Empty for bookings made before it was kept.
    request_fingerprint = models.CharField(max_length=64, blank=True, default="", editable=False)
    spec = models.JSONField()
    status = models.CharField(
        max_length=12, choices=BookingStatus.choices, default=BookingStatus.CONFIRMED
    )
    status_reason = models.CharField(max_length=500, blank=True)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    accelerators = models.PositiveIntegerField()
    estimated_cost = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    currency = models.CharField(max_length=3, blank=True)
    # A ``held`` booking lapses at this database time unless confirmed (its capacity comes back).
    hold_expires_at = models.DateTimeField(null=True, blank=True)
    # Set when a pool of the booking went degraded/offline after it was booked.
    flagged_reason = models.CharField(max_length=500, blank=True)
    replaced_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replaces"
    )
    # The class (a ``BookingClass`` slug): reserved, spot or priority.
    booking_class = models.ForeignKey(
        BookingClass,
        to_field="slug",
        db_column="booking_class",
        on_delete=models.PROTECT,
        default=BookingClassSlug.RESERVED,
        # Also in the database: the one-round-trip booking function writes reserved bookings.
        db_default=BookingClassSlug.RESERVED.value,
        related_name="+",
    )
    # A spot booking that is preempted is booked again elsewhere (``replaced_by``) if it asks.
    replace_on_preemption = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                name="booking_unique_idempotency_key_per_org",
                violation_error_message="This organization already used this idempotency key.",
            ),
            models.CheckConstraint(
                condition=Q(window_end__gt=F("window_start")),
                name="booking_window_positive",
                violation_error_message="A booking ends after it starts.",
            ),
        ]
        indexes = [
            # An organization's bookings, newest first (list endpoints, quotas).
            models.Index(fields=["organization", "-created_at"], name="booking_org_created_idx"),
            models.Index(fields=["status", "window_start"], name="booking_status_start_idx"),
        ]

    def __str__(self) -> str:
        return self.national_id


class Allocation(models.Model):
    """A part of a booking: ``accelerators`` accelerators of one pool from ``start`` to ``end``.

    Allocations keep their rows when the booking is cancelled or replaced (the booking's status
    says whether they still hold capacity), so the history can be audited at any instant.
    """

    booking = models.ForeignKey(Booking, on_delete=models.CASCADE, related_name="allocations")
    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="allocations")
    accelerators = models.PositiveIntegerField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    price_per_accelerator_hour = models.DecimalField(
        max_digits=10, decimal_places=4, null=True, blank=True
    )
    # The agent's pool key and its workload id, known once dispatched.
    workload_id = models.CharField(max_length=64, blank=True)
    workload_state = models.CharField(max_length=12, blank=True)

    class Meta:
        ordering = ["booking_id", "pool_id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(accelerators__gte=1),
                name="allocation_positive_accelerators",
                violation_error_message="An allocation holds at least one accelerator.",
            ),
            models.CheckConstraint(
                condition=Q(end__gt=F("start")),
                name="allocation_window_positive",
                violation_error_message="An allocation ends after it starts.",
            ),
        ]
        indexes = [
            # The oversell checker and "bookings on my pools" scan a pool's allocations by time.
            models.Index(fields=["pool", "start"], name="allocation_pool_start_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.booking_id}:{self.pool_id}x{self.accelerators}"


class PoolSlot(models.Model):
    """How many accelerators of a pool are reserved during one slot of time.

    Slots are ``BROKER_SLOT_MINUTES`` long and created lazily by the first booking that covers
    them; ``capacity`` is the pool's size when the row was made (kept in step by
    ``brokers.receivers`` when the pool changes). The CHECK constraint is the final guard of the
    capacity invariant: no code path, however wrong, can commit ``reserved > capacity``.
    """

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="+")
    slot_start = models.DateTimeField()
    capacity = models.PositiveIntegerField()
    # Everything reserved in the slot, firm (reserved, priority) and spot together.
    reserved = models.IntegerField(default=0)
    # The spot part of ``reserved``: what a firm booking may take back by preemption.
    spot_reserved = models.IntegerField(default=0, db_default=0)

    class Meta:
        ordering = ["pool_id", "slot_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["pool", "slot_start"],
                name="poolslot_unique_pool_slot",
                violation_error_message="A pool has one counter per slot.",
            ),
            models.CheckConstraint(
                condition=Q(reserved__gte=0) & Q(reserved__lte=F("capacity")),
                name="poolslot_reserved_within_capacity",
                violation_error_message="A pool cannot be reserved beyond its capacity.",
            ),
            models.CheckConstraint(
                condition=Q(spot_reserved__gte=0) & Q(spot_reserved__lte=F("reserved")),
                name="poolslot_spot_within_reserved",
                violation_error_message="Spot bookings are a part of what a slot holds.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pool_id}@{self.slot_start:%Y-%m-%d %H:%M} {self.reserved}/{self.capacity}"


class BookingEvent(models.Model):
    """One thing that happened to a booking; WatchBooking streams them in ``id`` order."""

    booking = models.ForeignKey(Booking, on_delete=models.CASCADE, related_name="events")
    time = models.DateTimeField(auto_now_add=True)
    kind = models.CharField(max_length=12, choices=EventKind.choices)
    status = models.CharField(max_length=12, choices=BookingStatus.choices)
    message = models.CharField(max_length=500, blank=True)
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["booking", "id"], name="bookingevent_booking_idx")]

    def __str__(self) -> str:
        return f"{self.booking_id} {self.kind} {self.status}"


class Quota(models.Model):
    """Limits the platform sets on an AI firm; enforced inside the booking transaction.

    ``max_concurrent_accelerators`` bounds the accelerators the firm's bookings hold at any
    instant; ``max_accelerator_hours_per_month`` bounds what its bookings starting in one
    calendar month (UTC) may add up to. Empty means no limit.
    """

    organization = models.OneToOneField(
        Organization, on_delete=models.CASCADE, related_name="quota"
    )
    max_concurrent_accelerators = models.PositiveIntegerField(null=True, blank=True)
    max_accelerator_hours_per_month = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"quota of {self.organization_id}"

    @property
    def change_log_owner(self) -> Organization:
        """The firm whose change log records its quota changes."""
        return self.organization


class UsageRecord(models.Model):
    """What one allocation really used: from the workload's real start to its real end.

    Written once per allocation when its workload ends; summed per organization and month.
    """

    allocation = models.OneToOneField(Allocation, on_delete=models.CASCADE, related_name="usage")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    accelerator_hours = models.DecimalField(max_digits=14, decimal_places=4)
    cost = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3, blank=True)

    class Meta:
        indexes = [models.Index(fields=["organization", "started_at"], name="usage_org_idx")]

    def __str__(self) -> str:
        return f"usage of {self.allocation_id}"


class ResaleOffer(models.Model):
    """A firm offers a confirmed booking that has not started (or its part from ``start`` on)
    to other firms at ``price``; the first buyer takes its allocations over (``bought``).

    An offer is open until sold, withdrawn, the booking leaves ``confirmed``, or the booking's
    start passes (``expires_at``, database time). At most one open offer per booking.
    """

    national_id = models.CharField(max_length=32, unique=True, editable=False)
    booking = models.ForeignKey(Booking, on_delete=models.CASCADE, related_name="offers")
    seller = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="+")
    start = models.DateTimeField()
    end = models.DateTimeField()
    accelerators = models.PositiveIntegerField()
    price = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3, blank=True)
    status = models.CharField(max_length=12, choices=OfferStatus.choices, default=OfferStatus.OPEN)
    expires_at = models.DateTimeField()
    buyer = models.ForeignKey(
        Organization, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    bought = models.OneToOneField(
        Booking, null=True, blank=True, on_delete=models.SET_NULL, related_name="bought_from"
    )
    sold_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["booking"],
                condition=Q(status="open"),
                name="resaleoffer_one_open_per_booking",
                violation_error_message="This booking is already offered.",
            ),
            models.CheckConstraint(
                condition=Q(price__gte=0),
                name="resaleoffer_price_not_negative",
                violation_error_message="A price must not be negative.",
            ),
            models.CheckConstraint(
                condition=Q(end__gt=F("start")),
                name="resaleoffer_window_positive",
                violation_error_message="An offer ends after it starts.",
            ),
        ]
        indexes = [models.Index(fields=["status", "expires_at"], name="offer_status_expiry_idx")]

    def __str__(self) -> str:
        return self.national_id
