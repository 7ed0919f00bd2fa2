"""Celery doors of verification: take ids, call one service, safe to run twice.

``pool_verify`` is acknowledged late and re-queued if its worker dies (``reject_on_worker_lost``);
the run's compare-and-set claim, its delivery counter and its once-only verdict make that safe.
gRPC channels are opened inside the service call, in the worker's child process.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task
from django.conf import settings

from verification import services
from verification.errors import AgentUnavailable

# Seconds before the first retry of an unreachable agent; each later retry waits twice as long
# (up to RETRY_BACKOFF_MAX), with no jitter: 2, 4, 8, 16, 32 s, so the default 5 retries span
# 62 s, more than an agent takes to start on a busy host (a worker started before its agents
# waits for them). Full jitter could draw ~0 s for every retry and give up within seconds.
RETRY_BACKOFF_SECONDS = 2
RETRY_BACKOFF_MAX = 60


@shared_task(
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    autoretry_for=(AgentUnavailable,),
    retry_backoff=RETRY_BACKOFF_SECONDS,
    retry_backoff_max=RETRY_BACKOFF_MAX,
    retry_jitter=False,
    max_retries=settings.VERIFICATION_MAX_RETRIES,
    # Below Redis' visibility timeout and RabbitMQ's consumer_timeout (RELIABILITY 2.3).
    time_limit=settings.VERIFICATION_TASK_TIME_LIMIT,
    soft_time_limit=max(1, settings.VERIFICATION_TASK_TIME_LIMIT - 10),
)
def pool_verify(self: Task, run_id: str) -> str:
    """Verify a pool: run ``verification_run`` for the run id; retries on AgentUnavailable."""
    final = self.request.retries >= self.max_retries
    outcome = services.verification_run(run_id=run_id, final_attempt=final)
    if outcome.retry_in is not None:
        # Another live worker holds the run: look again once its claim could have expired.
        pool_verify.apply_async((run_id,), countdown=outcome.retry_in)
    return outcome.state


@shared_task(acks_late=True, time_limit=120, soft_time_limit=100)
def reverify_sweep() -> dict[str, int]:
    """Queue re-verification of verified pools whose jittered interval has passed, send again
    the task of open runs whose message was lost, and prune old heartbeats."""
    resent = services.verification_requeue_stale()
    pruned = services.heartbeat_prune()
    return {"queued": len(services.reverify_sweep()), "resent": resent, "pruned": pruned}


@shared_task(acks_late=True, time_limit=120, soft_time_limit=100)
def heartbeat_sweep() -> dict[str, Any]:
    """Move silent pools to degraded, then offline; back to active when heartbeats return."""
    return services.heartbeat_sweep()
