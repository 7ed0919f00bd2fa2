"""How services send Celery tasks: by name, so that no service imports a task module.

Tasks import services (a task is a thin door onto a service); services that need work done later
name the task here instead of importing it, so the import graph has no cycle between the two
(``tests/ops/test_import_graph.py`` checks it, and that every name sent here is a registered
task). The name is looked up in the Celery app's registry (its tasks modules imported once, by
autodiscovery, the first time a name is missing), and the task's own ``apply_async`` publishes.
"""

import threading
from functools import partial
from typing import Any

from django.db import transaction

from interconnect.celery import app

# Autodiscovery runs once: a second thread calling it meanwhile returns at once, before the
# tasks are registered (a broker's first bookings, answered INTERNAL after they committed: the
# booking_holds task "not registered"). The lock makes the others wait for the first.
_discovery = threading.Lock()


def registered(task: str) -> Any:
    """The Celery task named ``task`` (``"app.tasks.function"``); KeyError if there is none."""
    if task not in app.tasks:
        with _discovery:
            app.loader.import_default_modules()  # autodiscovery: every app's tasks module, once
    return app.tasks[task]


def enqueue(task: str, *args: object, countdown: float | None = None) -> None:
    """Publish the task named ``task`` with ``args`` now."""
    options = {} if countdown is None else {"countdown": countdown}
    registered(task).apply_async(args, **options)


def enqueue_on_commit(task: str, *args: object, countdown: float | None = None) -> None:
    """Publish the task named ``task`` with ``args`` once the current transaction commits
    (at once outside a transaction); nothing is sent if it rolls back."""
    transaction.on_commit(partial(enqueue, task, *args, countdown=countdown))
