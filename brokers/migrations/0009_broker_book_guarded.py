"""Group commit: ``broker_book_guarded(...)`` runs ``broker_book`` in a savepoint of its own.

The broker process sends several bookings in one transaction (``brokers.group_commit``). Each
goes through this wrapper: the PL/pgSQL ``BEGIN ... EXCEPTION`` block is a subtransaction (an
implicit ``SAVEPOINT``), so a refusal (``P0001``, the reason code in the HINT) or an integrity
violation (class 23: the slots' CHECK constraint, a booking id collision) rolls back only this
booking and comes back as a row with ``error_state``, ``error_message`` and ``error_hint``; the
other bookings of the batch stay and commit together. Everything else (a deadlock, a
serialization failure, a cancelled statement, a lost connection) is not caught: it aborts the
whole batch, and the broker retries each of its bookings on its own.

The arguments are ``broker_book``'s, unchanged: whoever changes its signature changes this one.
"""

from typing import Any

from django.db import migrations

ARGS = """
    p_org bigint, p_user integer, p_door text, p_key text, p_fingerprint text,
    p_national_id text, p_spec jsonb,
    p_status text, p_hold_seconds double precision, p_start timestamptz, p_end timestamptz,
    p_accelerators integer, p_cost numeric, p_currency text,
    p_alloc_pools bigint[], p_alloc_counts integer[], p_alloc_prices numeric[],
    p_pools bigint[], p_counts integer[], p_slots timestamptz[],
    p_message text, p_data jsonb, p_hook text, p_payload jsonb
"""

GUARDED_FUNCTION = f"""
CREATE OR REPLACE FUNCTION broker_book_guarded({ARGS}) RETURNS TABLE (
    existing boolean, booking_id bigint, created_at timestamptz, hold_expires_at timestamptz,
    deliveries bigint[], error_state text, error_message text, error_hint text
) LANGUAGE plpgsql AS $fn$
BEGIN
    BEGIN  -- a subtransaction: the savepoint of this booking
        SELECT b.existing, b.booking_id, b.created_at, b.hold_expires_at, b.deliveries
        INTO existing, booking_id, created_at, hold_expires_at, deliveries
        FROM broker_book(
            p_org, p_user, p_door, p_key, p_fingerprint, p_national_id, p_spec, p_status,
            p_hold_seconds, p_start, p_end, p_accelerators, p_cost, p_currency, p_alloc_pools,
            p_alloc_counts, p_alloc_prices, p_pools, p_counts, p_slots, p_message, p_data,
            p_hook, p_payload
        ) b;
    EXCEPTION WHEN raise_exception OR integrity_constraint_violation THEN
        -- Only this booking rolls back; deadlocks, serialization failures and cancels are
        -- not caught here and abort the batch (retried booking by booking).
        GET STACKED DIAGNOSTICS error_state = RETURNED_SQLSTATE,
            error_message = MESSAGE_TEXT, error_hint = PG_EXCEPTION_HINT;
        existing := NULL;
        booking_id := NULL;
    END;
    RETURN NEXT;
END
$fn$;
"""

DROP_SQL = """
DROP FUNCTION IF EXISTS broker_book_guarded(
    bigint, integer, text, text, text, text, jsonb, text, double precision, timestamptz,
    timestamptz, integer, numeric, text, bigint[], integer[], numeric[], bigint[], integer[],
    timestamptz[], text, jsonb, text, jsonb
);
"""


def _run(schema_editor: Any, sql: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cur:
        cur.execute(sql)


def create(apps: Any, schema_editor: Any) -> None:
    _run(schema_editor, GUARDED_FUNCTION)


def drop(apps: Any, schema_editor: Any) -> None:
    _run(schema_editor, DROP_SQL)


class Migration(migrations.Migration):
    dependencies = [
        ("brokers", "0008_offer_expired_event"),
    ]

    operations = [migrations.RunPython(create, drop)]
