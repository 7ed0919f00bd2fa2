"""Request-scoped context that services read without being handed a request.

The request id follows a workload across web, broker, worker and agent: the web middleware sets
it from ``X-Request-ID`` (or makes one), gRPC servicers and Celery tasks set it from their own
metadata, and change records store it. The gRPC doors also set the caller's deadline.
"""

import contextvars
import re
import time
import uuid

from django.conf import settings

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# The caller's deadline (``time.monotonic()`` scale), set by the gRPC doors
# (``registry.rpc.AuthInterceptor``); the booking ledger turns what remains of it into the
# statement_timeout and refuses to commit after it, so work for a caller who gave up stops on the
# server and leaves nothing behind.
deadline_at: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "deadline_at", default=None
)

# What the server keeps back of the caller's remaining time: it gives up that much before the
# caller does, at most a quarter of the remaining time. The caller's deadline runs on the
# caller's clock from the moment it sent the call; the server's starts when the call arrived (a
# transit later), and a statement's timeout starts only when it reaches PostgreSQL, so without
# a margin a booking could commit in the instant after its caller was told DEADLINE_EXCEEDED.
DEFAULT_DEADLINE_MARGIN_SECONDS = 0.1


def server_deadline(remaining: float | None) -> float | None:
    """The ``deadline_at`` for a call with ``remaining`` seconds left (None: no deadline): the
    caller's deadline less the safety margin (``BROKER_DEADLINE_MARGIN_SECONDS``)."""
    if remaining is None:
        return None
    margin = float(
        getattr(settings, "BROKER_DEADLINE_MARGIN_SECONDS", DEFAULT_DEADLINE_MARGIN_SECONDS)
    )
    return time.monotonic() + remaining - min(max(0.0, margin), remaining / 4)


_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id(candidate: str | None = None) -> str:
    """Accept a caller's id if it is short and plain, else make a fresh one."""
    if candidate and _SAFE_ID.match(candidate):
        return candidate
    return uuid.uuid4().hex


def current_request_id() -> str:
    return request_id_var.get()
