"""A booking in one round trip, and notifications instead of polling (PostgreSQL only).

``broker_book(...)`` does, in the caller's transaction, what ``services._book_option`` does in
ten statements: the booking row (``INSERT ... ON CONFLICT`` on the idempotency key: a key
already used returns the stored booking's id instead), its allocations, its ``created`` event,
the webhook deliveries the event triggers, then the ledger: pools and centers locked ``FOR
SHARE`` in pool id order and checked ``active``, then one guarded upsert of each pool's slots in
slot order (``brokers.ledger`` explains why that order and that guard). The slots' CHECK
constraint stays the final word. A refusal raises ``P0001`` with the reason code in the HINT;
a firm with a quota row raises ``fast.unsupported`` (the quota rules live in Python: the service
books that firm in its Python path).

Triggers send notifications from the transaction that writes (delivered at its commit, never
for a rollback): ``broker_events`` with the booking id of every new booking event (WatchBooking
wakes on it); ``broker_pools`` with ``p<ids>`` / ``c<ids>`` (pools or centers inserted, changed
or deleted, comma separated) or ``all`` (traits, hubs, clusters, accelerator models, or more
rows than fit), on which every broker process refreshes its placement snapshot.

SQLite (``make run``) gets none of it: the service takes its Python path there, and the broker
polls.
"""

from typing import Any

from django.db import migrations

BOOK_FUNCTION = r"""
CREATE OR REPLACE FUNCTION broker_book(
    p_org bigint, p_user integer, p_door text, p_key text, p_fingerprint text,
    p_national_id text, p_spec jsonb,
    p_status text, p_hold_seconds double precision, p_start timestamptz, p_end timestamptz,
    p_accelerators integer, p_cost numeric, p_currency text,
    p_alloc_pools bigint[], p_alloc_counts integer[], p_alloc_prices numeric[],
    p_pools bigint[], p_counts integer[], p_slots timestamptz[],
    p_message text, p_data jsonb, p_hook text, p_payload jsonb
) RETURNS TABLE (
    existing boolean, booking_id bigint, created_at timestamptz, hold_expires_at timestamptz,
    deliveries bigint[]
) LANGUAGE plpgsql AS $fn$
DECLARE
    v_id bigint;
    v_created timestamptz;
    v_expires timestamptz;
    v_deliveries bigint[];
    v_found integer := 0;
    v_rows integer;
    v_slots integer := cardinality(p_slots);
    v_pool record;
    v_capacity integer;
    v_national text;
    i integer;
BEGIN
    INSERT INTO brokers_booking AS b (
        national_id, organization_id, created_by_id, door, idempotency_key,
        request_fingerprint, spec, status, status_reason, window_start, window_end,
        accelerators, estimated_cost, currency, hold_expires_at, flagged_reason,
        replaced_by_id, created_at, updated_at
    ) VALUES (
        p_national_id, p_org, p_user, p_door, p_key, p_fingerprint, p_spec, p_status, '',
        p_start, p_end,
        p_accelerators, p_cost, p_currency,
        CASE WHEN p_hold_seconds IS NULL THEN NULL
             ELSE now() + p_hold_seconds * interval '1 second' END,
        '', NULL, now(), now()
    )
    ON CONFLICT ON CONSTRAINT booking_unique_idempotency_key_per_org DO NOTHING
    RETURNING b.id, b.created_at, b.hold_expires_at INTO v_id, v_created, v_expires;
    IF v_id IS NULL THEN
        -- The key was used (perhaps a moment ago, by a transaction we waited for): the stored
        -- booking answers; the caller compares its request fingerprint with this one.
        RETURN QUERY SELECT true, b.id, b.created_at, b.hold_expires_at, NULL::bigint[]
            FROM brokers_booking b
            WHERE b.organization_id = p_org AND b.idempotency_key = p_key;
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM brokers_quota q WHERE q.organization_id = p_org) THEN
        RAISE EXCEPTION 'quota rules are checked by the service' USING HINT = 'fast.unsupported';
    END IF;

    INSERT INTO brokers_allocation (
        booking_id, pool_id, accelerators, start, "end", price_per_accelerator_hour,
        workload_id, workload_state
    )
    SELECT v_id, a.pool, a.n, p_start, p_end, a.price, '', ''
    FROM unnest(p_alloc_pools, p_alloc_counts, p_alloc_prices) WITH ORDINALITY
        AS a(pool, n, price, k)
    ORDER BY a.k;
    INSERT INTO brokers_bookingevent (booking_id, time, kind, status, message, data)
    VALUES (v_id, now(), 'created', p_status, left(p_message, 500), p_data);
    WITH made AS (
        INSERT INTO registry_webhookdelivery (
            subscription_id, event_id, event, payload, state, attempts, last_error, created_at
        )
        SELECT s.id, gen_random_uuid(), p_hook, p_payload, 'pending', 0, '', now()
        FROM registry_webhooksubscription s
        WHERE s.organization_id = p_org AND s.active
          AND (s.events = '[]'::jsonb OR s.events ? p_hook)
        ORDER BY s.created_at DESC, s.id
        RETURNING id
    )
    SELECT array_agg(id) INTO v_deliveries FROM made;

    -- The ledger, shared locks last: pools and centers FOR SHARE in pool id order.
    FOR v_pool IN
        SELECT p.id, p.national_id, p.status AS pool_status, c.status AS center_status,
               p.accelerators
        FROM registry_pool p JOIN registry_center c ON c.id = p.center_id
        WHERE p.id = ANY (p_pools) ORDER BY p.id FOR SHARE
    LOOP
        v_found := v_found + 1;
        IF v_pool.pool_status <> 'active' OR v_pool.center_status <> 'active' THEN
            RAISE EXCEPTION 'Pool % takes no bookings: it is % (center %).',
                v_pool.national_id, v_pool.pool_status, v_pool.center_status
                USING HINT = 'pool.not_bookable';
        END IF;
    END LOOP;
    IF v_found <> cardinality(p_pools) THEN
        RAISE EXCEPTION 'A pool of the booking no longer exists.' USING HINT = 'pool.unknown';
    END IF;
    FOR i IN 1 .. cardinality(p_pools) LOOP  -- p_pools is sorted: the global lock order
        SELECT p.accelerators, p.national_id INTO v_capacity, v_national
        FROM registry_pool p WHERE p.id = p_pools[i];
        IF p_counts[i] > v_capacity THEN
            RAISE EXCEPTION 'The request needs % accelerators of %, which has %.',
                p_counts[i], v_national, v_capacity USING HINT = 'booking.capacity_exceeded';
        END IF;
        INSERT INTO brokers_poolslot AS s (pool_id, slot_start, capacity, reserved)
        SELECT p_pools[i], t.slot, v_capacity, p_counts[i]
        FROM unnest(p_slots) WITH ORDINALITY AS t(slot, k) ORDER BY t.k
        ON CONFLICT (pool_id, slot_start) DO UPDATE
            SET reserved = s.reserved + excluded.reserved, capacity = excluded.capacity
            WHERE s.reserved + excluded.reserved <= excluded.capacity;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        IF v_rows <> v_slots THEN
            RAISE EXCEPTION 'Not enough free accelerators on % for the whole window.',
                v_national USING HINT = 'booking.capacity_exceeded';
        END IF;
    END LOOP;
    RETURN QUERY SELECT false, v_id, v_created, v_expires, v_deliveries;
END
$fn$;
"""

NOTIFY_SQL = r"""
CREATE OR REPLACE FUNCTION broker_notify_event() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('broker_events', NEW.booking_id::text);
    RETURN NULL;
END
$fn$;
CREATE TRIGGER broker_event_notify AFTER INSERT ON brokers_bookingevent
    FOR EACH ROW EXECUTE FUNCTION broker_notify_event();

-- Changed rows' ids (p... for pools, c... for centers), or 'all' past 500 rows.
CREATE OR REPLACE FUNCTION broker_notify_rows() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ids text;
    n integer;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT count(*), string_agg(id::text, ',') INTO n, ids
        FROM (SELECT id FROM old_rows LIMIT 501) r;
    ELSE
        SELECT count(*), string_agg(id::text, ',') INTO n, ids
        FROM (SELECT id FROM new_rows LIMIT 501) r;
    END IF;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('broker_pools', CASE WHEN n > 500 THEN 'all' ELSE TG_ARGV[0] || ids END);
    RETURN NULL;
END
$fn$;
CREATE OR REPLACE FUNCTION broker_notify_all() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('broker_pools', 'all');
    RETURN NULL;
END
$fn$;
CREATE TRIGGER broker_pool_insert AFTER INSERT ON registry_pool
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_rows('p');
CREATE TRIGGER broker_pool_update AFTER UPDATE ON registry_pool
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_rows('p');
CREATE TRIGGER broker_pool_delete AFTER DELETE ON registry_pool
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_rows('p');
CREATE TRIGGER broker_center_update AFTER UPDATE ON registry_center
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_rows('c');
CREATE TRIGGER broker_center_delete AFTER DELETE ON registry_center
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_rows('c');
CREATE TRIGGER broker_traits_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON registry_pool_traits FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_all();
CREATE TRIGGER broker_cluster_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON registry_cluster FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_all();
CREATE TRIGGER broker_hub_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON registry_hub FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_all();
CREATE TRIGGER broker_accelerator_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON registry_accelerator FOR EACH STATEMENT EXECUTE FUNCTION broker_notify_all();
"""

DROP_SQL = r"""
DROP TRIGGER IF EXISTS broker_event_notify ON brokers_bookingevent;
DROP TRIGGER IF EXISTS broker_pool_insert ON registry_pool;
DROP TRIGGER IF EXISTS broker_pool_update ON registry_pool;
DROP TRIGGER IF EXISTS broker_pool_delete ON registry_pool;
DROP TRIGGER IF EXISTS broker_center_update ON registry_center;
DROP TRIGGER IF EXISTS broker_center_delete ON registry_center;
DROP TRIGGER IF EXISTS broker_traits_change ON registry_pool_traits;
DROP TRIGGER IF EXISTS broker_cluster_change ON registry_cluster;
DROP TRIGGER IF EXISTS broker_hub_change ON registry_hub;
DROP TRIGGER IF EXISTS broker_accelerator_change ON registry_accelerator;
DROP FUNCTION IF EXISTS broker_notify_event();
DROP FUNCTION IF EXISTS broker_notify_rows();
DROP FUNCTION IF EXISTS broker_notify_all();
DROP FUNCTION IF EXISTS broker_book(
    bigint, integer, text, text, text, text, jsonb, text, double precision, timestamptz,
    timestamptz, integer, numeric, text, bigint[], integer[], numeric[], bigint[], integer[],
    timestamptz[], text, jsonb, text, jsonb
);
"""


def _run(schema_editor: Any, *scripts: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cur:
        for sql in scripts:
            cur.execute(sql)  # no parameters: the '%' of RAISE stays as it is


def create(apps: Any, schema_editor: Any) -> None:
    _run(schema_editor, BOOK_FUNCTION, NOTIFY_SQL)


def drop(apps: Any, schema_editor: Any) -> None:
    _run(schema_editor, DROP_SQL)


class Migration(migrations.Migration):
    dependencies = [
        ("brokers", "0005_booking_request_fingerprint"),
        ("registry", "0005_verification_chain"),
    ]

    operations = [migrations.RunPython(create, drop)]
