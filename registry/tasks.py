"""Celery tasks of the registry: thin wrappers over services."""

from celery import Task, shared_task

from registry import webhooks


@shared_task(
    bind=True,
    acks_late=True,
    autoretry_for=(webhooks.DeliveryFailed,),
    retry_backoff=2,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
    soft_time_limit=30,
    time_limit=60,
)
def webhook_deliver_task(self: Task, delivery_id: int) -> None:
    """Deliver one webhook; retried with backoff; marked failed after the last retry."""
    try:
        webhooks.webhook_deliver(delivery_id=delivery_id)
    except webhooks.DeliveryFailed:
        if self.request.retries >= self.max_retries:
            webhooks.webhook_give_up(delivery_id=delivery_id)
            return
        raise


@shared_task(acks_late=True, time_limit=120, soft_time_limit=100)
def webhook_relay_task() -> int:
    """Periodic outbox relay: re-enqueue deliveries whose task message was lost."""
    return webhooks.webhook_requeue_pending()
