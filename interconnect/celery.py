"""The Celery app, configured from Django settings (``CELERY_*``).

Workers create gRPC channels lazily inside each process, never at import time, because
Celery forks its pool after importing this module.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interconnect.settings")

app = Celery("interconnect")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# --- The request id follows a task: stamped on publish, restored before the task runs. ---------
from typing import Any  # noqa: E402

from celery.signals import (  # noqa: E402
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_init,
)

from registry.context import new_request_id, request_id_var  # noqa: E402

_tokens: dict[str, Any] = {}


@before_task_publish.connect
def _stamp_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is not None:
        from registry.context import current_request_id

        headers.setdefault("request_id", current_request_id())


@task_prerun.connect
def _restore_request_id(task_id: str | None = None, task: Any = None, **kwargs: Any) -> None:
    incoming = getattr(task.request, "request_id", None) if task is not None else None
    if task_id:
        _tokens[task_id] = request_id_var.set(new_request_id(incoming))


@task_postrun.connect
def _clear_request_id(task_id: str | None = None, **kwargs: Any) -> None:
    token = _tokens.pop(task_id, None) if task_id else None
    if token is not None:
        request_id_var.reset(token)


@worker_init.connect
def _serve_metrics(**kwargs: Any) -> None:
    """A worker's metrics on ``METRICS_PORT``: served by the main process, summed over its pool
    children (multiprocess mode, see ``interconnect.metrics``)."""
    from interconnect.metrics import start_metrics_server

    start_metrics_server()
