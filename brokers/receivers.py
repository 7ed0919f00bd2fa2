"""The broker's reactions to registry events (the registry never imports the broker)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver

from brokers import services
from registry.choices import Status
from registry.models import Center, Pool
from registry.signals import status_changed

FLAGGING_STATUSES = frozenset({Status.DEGRADED, Status.OFFLINE})


@receiver(status_changed, dispatch_uid="brokers.flag_bookings")
def flag_bookings(
    sender: Any, object_type: str, object_id: int, to_status: str, reason: str, **kwargs: Any
) -> None:
    """A pool or center went degraded/offline (sent on commit): flag the bookings on it."""
    if to_status not in FLAGGING_STATUSES:
        return
    if object_type == Pool._meta.label_lower:
        pool_ids = [object_id]
    elif object_type == Center._meta.label_lower:
        pool_ids = list(Pool.objects.filter(center_id=object_id).values_list("pk", flat=True))
    else:
        return
    for pool_id in pool_ids:
        services.booking_flag_pool(pool_id=pool_id, to_status=to_status, reason=reason)


@receiver(post_save, sender=Pool, dispatch_uid="brokers.sync_pool_capacity")
def sync_pool_capacity(sender: Any, instance: Pool, created: bool, **kwargs: Any) -> None:
    """Inside the pool's own transaction: a size change reaches the future slot counters, and a
    shrink below what is booked rolls the pool's change back (the slots' CHECK)."""
    if created:
        return
    services.pool_capacity_sync(
        pool_id=instance.pk, capacity=instance.nodes * instance.accelerators_per_node
    )
