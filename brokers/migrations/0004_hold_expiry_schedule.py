"""Schedule the sweep that lets lapsed holds give their capacity back (every minute).

A data migration, so every deployment and ``make run`` get it with ``migrate``; idempotent.
"""

from typing import Any

from django.db import migrations

NAME = "brokers: hold expiry sweep"


def schedule(apps: Any, schema_editor: Any) -> None:
    interval_model = apps.get_model("django_celery_beat", "IntervalSchedule")
    task_model = apps.get_model("django_celery_beat", "PeriodicTask")
    every, _ = interval_model.objects.get_or_create(every=60, period="seconds")
    task_model.objects.update_or_create(
        name=NAME,
        defaults={
            "task": "brokers.tasks.bookings_expire_holds",
            "interval": every,
            "enabled": True,
        },
    )


def unschedule(apps: Any, schema_editor: Any) -> None:
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("brokers", "0003_booking_hold"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule)]
