"""The Celery options verification relies on are really applied (RELIABILITY 2, 7)."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from interconnect.celery import app
from verification.errors import AgentUnavailable
from verification.tasks import RETRY_BACKOFF_SECONDS, heartbeat_sweep, pool_verify, reverify_sweep

# RabbitMQ's consumer_timeout (30 min since 3.8.15 defaults changed) bounds every ack.
RABBITMQ_CONSUMER_TIMEOUT_S = 1800


def test_pool_verify_is_acknowledged_late_and_requeued_if_its_worker_dies() -> None:
    assert pool_verify.acks_late is True
    assert pool_verify.reject_on_worker_lost is True
    assert pool_verify.autoretry_for == (AgentUnavailable,)
    assert pool_verify.retry_backoff == RETRY_BACKOFF_SECONDS and pool_verify.retry_jitter is False
    assert pool_verify.max_retries >= 3  # read from VERIFICATION_MAX_RETRIES at import
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_always_eager is False


def test_time_limits_stay_below_redelivery_windows() -> None:
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    for task in (pool_verify, heartbeat_sweep, reverify_sweep):
        assert task.soft_time_limit < task.time_limit
        assert task.time_limit < min(visibility, RABBITMQ_CONSUMER_TIMEOUT_S)


@pytest.mark.django_db
def test_setup_schedules_creates_the_sweeps_once() -> None:
    call_command("setup_schedules", verbosity=0)
    call_command("setup_schedules", verbosity=0)

    tasks = set(PeriodicTask.objects.values_list("task", flat=True))
    assert {"verification.tasks.heartbeat_sweep", "verification.tasks.reverify_sweep"} <= tasks
    assert PeriodicTask.objects.filter(task__startswith="verification.").count() == 2
