"""``broker_deadline_guard(budget_ms)``: the last statement before a booking's ``COMMIT``.

``statement_timeout`` bounds each statement on its own, and its clock starts only when the
statement reaches the server: a batch of several bookings (``brokers.group_commit``) restarts
it for every booking, and a statement sent late runs late. The guard bounds the whole
transaction instead: it raises ``query_canceled`` (57014, what the statement timeout raises)
when more than ``budget_ms`` milliseconds have passed on the server's clock since the
transaction began, so the ``COMMIT`` after it never runs for a caller whose deadline passed.
"""

from typing import Any

from django.db import migrations

GUARD_FUNCTION = """
CREATE OR REPLACE FUNCTION broker_deadline_guard(p_budget_ms integer) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF clock_timestamp() - transaction_timestamp() >= p_budget_ms * interval '1 millisecond' THEN
        RAISE EXCEPTION 'the deadline passed before the commit (budget % ms)', p_budget_ms
            USING ERRCODE = 'query_canceled';
    END IF;
END
$fn$;
"""

DROP_SQL = "DROP FUNCTION IF EXISTS broker_deadline_guard(integer);"


def _run(schema_editor: Any, sql: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cur:
        cur.execute(sql)


def create(apps: Any, schema_editor: Any) -> None:
    _run(schema_editor, GUARD_FUNCTION)


def drop(apps: Any, schema_editor: Any) -> None:
    _run(schema_editor, DROP_SQL)


class Migration(migrations.Migration):
    dependencies = [
        ("brokers", "0009_broker_book_guarded"),
    ]

    operations = [migrations.RunPython(create, drop)]
