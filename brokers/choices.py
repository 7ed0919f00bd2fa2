"""Declared state sets of the broker: booking statuses, event kinds, latency classes."""

from django.db import models


class BookingStatus(models.TextChoices):
    """Lifecycle of a booking.

    ``held`` and ``confirmed`` reserve capacity before the workload runs; ``dispatching`` and
    ``running`` while the centers' agents have it; ``finished``, ``cancelled`` and ``failed`` are
    final; ``replaced`` means the broker moved the workload to other capacity (a new booking,
    named in the ``replaced`` event) after a dispatch failure or a center going offline.
    """

    HELD = "held", "Held"
    CONFIRMED = "confirmed", "Confirmed"
    DISPATCHING = "dispatching", "Dispatching"
    RUNNING = "running", "Running"
    FINISHED = "finished", "Finished"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"
    REPLACED = "replaced", "Replaced"


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


class LatencyClass(models.TextChoices):
    """How close to its data a workload must run.

    Interactive work stays near its data (low round-trip latency); training and batch may go
    west, where power is cheaper and greener.
    """

    INTERACTIVE = "interactive", "Interactive"
    TRAINING = "training", "Training"
    BATCH = "batch", "Batch"
