"""Reactions to the registry's signals (the registry never imports verification)."""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from registry.choices import Door
from registry.models import Pool
from registry.signals import pool_submitted
from verification import services
from verification.choices import Trigger

logger = logging.getLogger(__name__)


@receiver(pool_submitted, dispatch_uid="verification.queue_on_submit")
def queue_verification_on_submit(sender: Any, pool_id: int, **kwargs: Any) -> None:
    """A submitted pool gets a verification run (sent on commit of the submission)."""
    try:
        pool = Pool.objects.select_related("center").get(pk=pool_id)
        services.verification_request(
            pool=pool, trigger=Trigger.SUBMITTED, actor=None, door=Door.WORKER
        )
    except Exception:
        # The submission is committed already; the re-verification sweep or the operator's
        # reverify request can still queue it. Never fail the submitter's request here.
        logger.exception("could not queue verification of pool %s", pool_id)
