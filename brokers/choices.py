"""Declared state sets of the broker: booking statuses, event kinds, latency classes."""

from django.db import models


class BookingStatus(models.TextChoices):
    """Lifecycle of a booking.

    ``held`` and ``confirmed`` reserve capacity before the workload runs; ``dispatching`` and
    ``running`` while the centers' agents have it; ``finished``, ``cancelled`` and ``failed`` are
    final; ``replaced`` means the broker moved the workload to other capacity (a new booking,
    named in the ``replaced`` event) after a dispatch failure or a center going offline;
    ``preempted`` means a spot booking gave its capacity to a reserved or priority booking
    (named in the ``preempted`` event); ``sold`` means the firm resold the whole booking (the
    buyer's booking, named in the ``sold`` event, holds its allocations now).
    """

    HELD = "held", "Held"
    CONFIRMED = "confirmed", "Confirmed"
    DISPATCHING = "dispatching", "Dispatching"
    RUNNING = "running", "Running"
    FINISHED = "finished", "Finished"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"
    REPLACED = "replaced", "Replaced"
    PREEMPTED = "preempted", "Preempted"
    SOLD = "sold", "Sold"


# Statuses whose allocations hold capacity in the ledger (their slots are reserved).
RESERVING_STATUSES: frozenset[str] = frozenset(
    {
        BookingStatus.HELD,
        BookingStatus.CONFIRMED,
        BookingStatus.DISPATCHING,
        BookingStatus.RUNNING,
    }
)
# Final statuses: nothing happens to the booking any more; watchers stop here.
FINAL_STATUSES: frozenset[str] = frozenset(
    {
        BookingStatus.FINISHED,
        BookingStatus.CANCELLED,
        BookingStatus.FAILED,
        BookingStatus.REPLACED,
        BookingStatus.PREEMPTED,
        BookingStatus.SOLD,
    }
)
# Statuses a client may cancel from (a running workload is stopped at its centers).
CANCELLABLE_STATUSES: frozenset[str] = RESERVING_STATUSES


class EventKind(models.TextChoices):
    """What a booking event records; the WatchBooking stream carries these."""

    CREATED = "created", "Created"
    STATUS = "status", "Status changed"
    DISPATCHED = "dispatched", "Dispatched to a center"
    WORKLOAD = "workload", "Workload state at a center"
    FLAGGED = "flagged", "A pool of the booking went degraded or offline"
    REPLACED = "replaced", "Moved to other capacity"
    ERROR = "error", "Error"
    PREEMPTED = "preempted", "Preempted by a reserved or priority booking"
    OFFERED = "offered", "Offered for resale"
    WITHDRAWN = "withdrawn", "Resale offer withdrawn"
    EXPIRED = "expired", "Resale offer expired unsold"
    SOLD = "sold", "Resold to another firm"
    BOUGHT = "bought", "Bought from another firm"


class BookingClassSlug(models.TextChoices):
    """The booking classes (rows of ``brokers.BookingClass``, made by migration 0007)."""

    RESERVED = "reserved", "Reserved"
    SPOT = "spot", "Spot"
    PRIORITY = "priority", "Priority"


class OfferStatus(models.TextChoices):
    """Lifecycle of a resale offer; an ``open`` offer whose start has passed is expired
    (the sweep writes ``expired``, every read checks the start itself)."""

    OPEN = "open", "Open"
    SOLD = "sold", "Sold"
    WITHDRAWN = "withdrawn", "Withdrawn"
    EXPIRED = "expired", "Expired"


class LatencyClass(models.TextChoices):
    """How close to its data a workload must run.

    Interactive work stays near its data (low round-trip latency); training and batch may go
    west, where power is cheaper and greener.
    """

    INTERACTIVE = "interactive", "Interactive"
    TRAINING = "training", "Training"
    BATCH = "batch", "Batch"
