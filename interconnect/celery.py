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
