"""Create (or update) the periodic tasks in django-celery-beat (idempotent)."""

from typing import Any

from django.core.management.base import BaseCommand
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

# name -> (task, every N seconds). The sweeps are idempotent, so a late or doubled beat is harmless.
SCHEDULES = {
    "verification: heartbeat sweep": ("verification.tasks.heartbeat_sweep", 10),
    "verification: re-verification sweep": ("verification.tasks.reverify_sweep", 60),
    # The webhook outbox relay (registry): re-sends deliveries whose task message was lost.
    "registry: webhook relay": ("registry.tasks.webhook_relay_task", 300),
    # The booking dispatch relay and scheduler (brokers): dispatches bookings whose start is due
    # (claimed by compare-and-set) and recovers dispatch messages lost at commit.
    "brokers: dispatch relay": ("brokers.tasks.dispatch_due_bookings", 10),
    # The market's offer expiry (brokers): open resale offers whose booking started become
    # ``expired`` with an event (reads and purchases check the start themselves meanwhile).
    "brokers: offer expiry sweep": ("brokers.tasks.offers_expire", 60),
}


class Command(BaseCommand):
    help = "Create the periodic tasks (sweeps and relays of every app; see SCHEDULES)."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, (task, seconds) in SCHEDULES.items():
            every, _ = IntervalSchedule.objects.get_or_create(
                every=seconds, period=IntervalSchedule.SECONDS
            )
            PeriodicTask.objects.update_or_create(
                name=name, defaults={"task": task, "interval": every, "enabled": True}
            )
        # Beat re-reads its schedule only when this counter moves.
        PeriodicTasks.update_changed()
        self.stdout.write(f"{len(SCHEDULES)} periodic tasks scheduled")
