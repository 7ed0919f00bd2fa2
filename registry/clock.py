"""One clock for decisions that compare times written by different processes: the database's.

Heartbeats are stamped by the telemetry server and judged by a Celery worker; holds are created
by a broker replica and expired by another. Each machine's own clock may drift (RELIABILITY X12),
so such comparisons use ``db_now()``.
"""

import datetime as dt

from django.db import connection


def db_now() -> dt.datetime:
    """The database server's current time, timezone-aware (UTC)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT statement_timestamp()")
            value: dt.datetime = cursor.fetchone()[0]
            return value.astimezone(dt.UTC)
        # SQLite: the embedded default runs on one machine, whose clock it reads.
        cursor.execute("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")
        text = cursor.fetchone()[0]
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)
