"""Celery tasks of the broker: take ids, refetch, call one function, safe to run twice."""

from __future__ import annotations

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from brokers import dispatch, services
from brokers.models import Booking

FOLLOW_AGAIN_SECONDS = 2
# What a dispatch or follow step cut by its soft time limit returns: a new message continues.
HANDED_OVER = "handed over"


@shared_task(bind=True, acks_late=True, ignore_result=True, soft_time_limit=100, time_limit=120)
def dispatch_due_bookings(self: Task) -> int:
    """The dispatch relay and scheduler (every ``DISPATCH_RELAY_SECONDS``, ``setup_schedules``;
    also kicked on commit for a booking that starts now): claim each booking whose start is due
    by compare-and-set and enqueue its dispatch. A lost message only delays a start to the next
    run; two relays at once never claim one booking twice. No message carries a long ETA.
    Redelivered after its worker died between claiming and sending, it sends its claims again
    (the claims carry this task's id)."""
    claimed = dispatch.relay(token=self.request.id or "")
    for booking_id in claimed:
        booking_dispatch.delay(booking_id)
    return len(claimed)


@shared_task(acks_late=True, ignore_result=True)
def booking_dispatch(booking_id: int) -> str:
    """Start a booking's workload at its centers, then follow it (idempotent per booking: sent
    by the relay that claimed it; a redelivery starts nothing twice). Cut by its soft time limit
    (a slow agent), it hands over to a new message instead of ending the booking's follow-up."""
    try:
        outcome = dispatch.dispatch(booking_id)
    except SoftTimeLimitExceeded:
        booking_dispatch.apply_async((booking_id,), countdown=FOLLOW_AGAIN_SECONDS)
        return HANDED_OVER
    if outcome == dispatch.Outcome.FOLLOW:
        booking_follow.apply_async((booking_id,), countdown=FOLLOW_AGAIN_SECONDS)
    return outcome.value


@shared_task(acks_late=True, ignore_result=True)
def booking_follow(booking_id: int) -> str:
    """Follow a dispatched booking for a while; hand over to a new task if it still runs (or if
    the step is cut by its soft time limit)."""
    try:
        outcome = dispatch.follow(booking_id)
    except SoftTimeLimitExceeded:
        booking_follow.apply_async((booking_id,), countdown=FOLLOW_AGAIN_SECONDS)
        return HANDED_OVER
    if outcome == dispatch.Outcome.FOLLOW:
        booking_follow.apply_async((booking_id,), countdown=FOLLOW_AGAIN_SECONDS)
    return outcome.value


@shared_task(acks_late=True, ignore_result=True)
def booking_stop(booking_id: int) -> None:
    """Stop a cancelled booking's workloads at its centers."""
    dispatch.stop(booking_id)


@shared_task(acks_late=True, ignore_result=True)
def booking_holds(booking_id: int) -> str:
    """Hold a confirmed booking's window at its centers, or release a cancelled or re-placed
    one's (idempotent: holds are per allocation id on the agents)."""
    return dispatch.sync_holds(booking_id).value


@shared_task(acks_late=True, ignore_result=True)
def booking_replace(booking_id: int, center_national_id: str) -> None:
    """Re-place a booking whose center went offline before it started."""
    booking = Booking.objects.filter(pk=booking_id).first()
    if booking is None:
        return
    services.booking_replace(
        booking=booking,
        exclude_center=center_national_id,
        reason=f"center {center_national_id} went offline before the workload started",
    )


@shared_task(acks_late=True, ignore_result=True)
def bookings_expire_holds() -> int:
    """Periodic sweep (every minute, scheduled by migration 0004): lapsed holds give their
    capacity back. Idempotent: a hold lapses once."""
    return services.bookings_expire_holds()


@shared_task(acks_late=True, ignore_result=True)
def booking_stop_preempted(booking_id: int) -> None:
    """Stop a preempted booking's running workloads with the grace period, then record what
    each really ran (it is billed for that only); follows again while a workload still runs."""
    if not dispatch.stop_preempted(booking_id):
        booking_stop_preempted.apply_async((booking_id,), countdown=FOLLOW_AGAIN_SECONDS)


@shared_task(acks_late=True, ignore_result=True)
def booking_replace_preempted(booking_id: int) -> None:
    """Book a preempted spot booking again elsewhere (it asked to be re-placed)."""
    from brokers import market

    booking = Booking.objects.filter(pk=booking_id).first()
    if booking is not None:
        market.replace_preempted(booking=booking)


@shared_task(acks_late=True, ignore_result=True)
def booking_holds_moved(seller_id: int, bought_id: int) -> None:
    """A resale: the seller's holds at the centers go (or shrink) before the buyer's are made."""
    dispatch.move_holds(seller_id, bought_id)


@shared_task(acks_late=True, ignore_result=True)
def offers_expire() -> int:
    """Periodic sweep (every minute, ``setup_schedules``): open resale offers whose booking has
    started become ``expired``, with an event. Idempotent: an offer expires once; reads and
    purchases check the start themselves, so a late sweep sells nothing late."""
    from brokers import market

    return market.offers_expire()
