"""How fast the portal answers with national-scale data. Prints one table: p50 / p95 / max
server time and the query count of every page, as each role sees it.

The data (built once, reused by later runs; ``--rebuild`` starts over) lives in its own
PostgreSQL database, ``ci_portalbench``: the national topology and catalog, 250 organizations,
20,000 centers, 100,000 pools, 1,000,000 bookings (each with an allocation and an event), the
ledger's slots around now, usage records of finished work, one verification run per pool,
24 hours of hourly heartbeats from 5,000 pools, lifecycle transitions and change records. It is
made with ``INSERT ... SELECT generate_series`` in a few statements.

Pages are requested in-process through Django's test client (the full middleware, URL, view,
ORM and template stack; no socket), ``--repeat`` times each after three warm-up requests.

    .venv/bin/python bench/portal_bench.py                  # build if needed, then measure
    .venv/bin/python bench/portal_bench.py --rebuild        # drop and rebuild the data
    PORTAL_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/other ...

DEBUG is off, as in production. The dashboard's national activity figures (utilization, demand
flows) are cached and refreshed ahead in the background; its row is measured warm and, separately,
with the cache cleared before every request (what only the first visitor after a start pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_URL = os.environ.get(
    "PORTAL_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ci_portalbench"
)
os.environ["DATABASE_URL"] = DB_URL
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interconnect.settings")
os.environ["DJANGO_DEBUG"] = "0"
os.environ.setdefault("LOG_LEVEL", "WARNING")

POOLS = 100_000
POOLS_PER_CENTER = 5
OPERATORS = 200
FIRMS = 50
BOOKINGS = 1_000_000
HEARTBEAT_POOLS = 5_000


def ensure_database(rebuild: bool) -> None:
    """Create (or re-create) the bench database; it must be one the bench may own."""
    import psycopg

    url = urlparse(DB_URL)
    name = url.path.lstrip("/")
    admin = DB_URL.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists and rebuild:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def step(what: str, sql: str, params: list[Any] | None = None) -> None:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cur:
        if params is None:
            cur.execute(sql)
        else:
            # With parameters, a literal modulo must be written %% for the driver.
            cur.execute(sql.replace("% ", "%% "), params)
        rows = cur.rowcount
    print(f"  {what:<34} {rows:>10,} rows  {time.perf_counter() - started:6.1f} s", flush=True)


def build() -> None:
    """Make the national-scale data set (see the module docstring)."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection

    from registry.choices import OrgKind, Role
    from registry.models import Accelerator, Cluster, Membership, Organization

    print("building the data set (once):", flush=True)
    call_command("migrate", verbosity=0)
    call_command("seed_national_topology", verbosity=0)
    users = get_user_model()
    platform = Organization.objects.create(
        slug="bench-platform", name="Bench platform", kind=OrgKind.PLATFORM
    )
    operators = Organization.objects.bulk_create(
        [
            Organization(slug=f"op-{i}", name=f"Operator {i}", kind=OrgKind.OPERATOR)
            for i in range(OPERATORS)
        ]
    )
    firms = Organization.objects.bulk_create(
        [
            Organization(slug=f"firm-{i}", name=f"AI firm {i}", kind=OrgKind.AI_FIRM)
            for i in range(FIRMS)
        ]
    )
    for username, org in (
        ("bench-staff", platform),
        ("bench-op", operators[0]),
        ("bench-firm", firms[0]),
    ):
        user = users.objects.create_user(username=username, password="bench-password-1")
        Membership.objects.create(user=user, organization=org, role=Role.ADMIN)
    op_ids = [o.pk for o in operators]
    firm_ids = [o.pk for o in firms]
    cluster_ids = list(Cluster.objects.order_by("pk").values_list("pk", flat=True))
    acc_ids = list(Accelerator.objects.order_by("pk").values_list("pk", flat=True))
    centers = POOLS // POOLS_PER_CENTER
    step(
        "centers",
        "INSERT INTO registry_center (status, status_reason, status_changed_at, version,"
        " created_at, updated_at, national_id, name, latitude, longitude, pue, green_power_share,"
        " agent_endpoint, next_pool_seq, cluster_id, operator_id)"
        " SELECT CASE WHEN g % 20 = 0 THEN 'submitted' ELSE 'active' END, '', now(), 1,"
        " now() - interval '90 days', now(), 'CN-BENCH-' || lpad(g::text, 6, '0'),"
        " 'Bench center ' || g, 25 + (g % 20), 90 + (g % 30), 1.1 + (g % 5) * 0.05,"
        " (g % 10) / 10.0, '10.0.' || (g % 250) || '.1:50051', 6,"
        " (%s::bigint[])[g % %s + 1], (%s::bigint[])[g % %s + 1]"
        " FROM generate_series(0, %s) g",
        [cluster_ids, len(cluster_ids), op_ids, OPERATORS, centers - 1],
    )
    step(
        "pools",
        "INSERT INTO registry_pool (status, status_reason, status_changed_at, version, created_at,"
        " updated_at, national_id, name, accelerators_per_node, nodes, intra_node_interconnect,"
        " intra_node_bandwidth_gbps, inter_node_interconnect, inter_node_bandwidth_gbps,"
        " price_per_accelerator_hour, currency, declared_tflops_per_accelerator,"
        " measured_tflops_per_accelerator, verified_at, accelerator_id, center_id)"
        " SELECT CASE g % 20 WHEN 0 THEN 'draft' WHEN 1 THEN 'submitted' WHEN 2 THEN 'degraded'"
        " ELSE 'active' END, '', now() - interval '30 days', 1,"
        " now() - interval '90 days' + g * interval '1 minute', now(),"
        " c.national_id || '-P' || lpad((g % 5 + 1)::text, 2, '0'), 'Pool ' || g, 8, 1 + g % 16,"
        " 'NVLink', 400, 'InfiniBand NDR', 400, 4 + (g % 30), 'CNY', 300,"
        " CASE WHEN g % 20 > 1 THEN 280 + g % 40 END, CASE WHEN g % 20 > 1 THEN now() END,"
        " (%s::bigint[])[g % %s + 1], c.id"
        " FROM generate_series(0, %s) g"
        " JOIN registry_center c ON c.national_id = 'CN-BENCH-' || lpad((g / 5)::text, 6, '0')",
        [acc_ids, len(acc_ids), POOLS - 1],
    )
    with connection.cursor() as cur:
        cur.execute("SELECT min(id) FROM registry_pool")
        first_pool = cur.fetchone()[0]
    # Each booking sits on pool (i * 7919) mod POOLS: spread over every pool, deterministic.
    step(
        "bookings",
        "INSERT INTO brokers_booking (national_id, door, idempotency_key, spec, status,"
        " status_reason, window_start, window_end, accelerators, estimated_cost, currency,"
        " flagged_reason, created_at, updated_at, organization_id)"
        " SELECT 'BK-BENCH-' || lpad(g::text, 7, '0'), 'api', 'k' || g,"
        " jsonb_build_object('data_hub', (ARRAY['BTH','YRD','GBA','CC','','NX'])[g % 6 + 1],"
        "   'count', 8, 'accelerator_model', 'nvidia-a100-80g', 'duration', 3600 * (g % 8 + 1)),"
        " CASE WHEN ws + (g % 8 + 1) * interval '1 hour' < now()"
        "   THEN CASE WHEN g % 7 = 0 THEN 'cancelled' ELSE 'finished' END"
        "   WHEN ws > now() THEN CASE WHEN g % 9 = 0 THEN 'cancelled' ELSE 'confirmed' END"
        "   ELSE 'running' END,"
        " '', ws, ws + (g % 8 + 1) * interval '1 hour', 8, 80 * (g % 8 + 1), 'CNY', '',"
        " ws - interval '1 day', now(), (%s::bigint[])[g % %s + 1]"
        " FROM (SELECT g, now() - interval '60 days' + (g % 129600) * interval '1 minute' AS ws"
        "       FROM generate_series(0, %s) g) s",
        [firm_ids, FIRMS, BOOKINGS - 1],
    )
    step(
        "allocations",
        'INSERT INTO brokers_allocation (accelerators, start, "end", price_per_accelerator_hour,'
        " workload_id, workload_state, pool_id, booking_id)"
        " SELECT 8, b.window_start, b.window_end, 10, '', '',"
        " %s + (substr(b.national_id, 10)::bigint * 7919) % %s, b.id FROM brokers_booking b",
        [first_pool, POOLS],
    )
    step(
        "booking events",
        "INSERT INTO brokers_bookingevent (time, kind, status, message, data, booking_id)"
        " SELECT b.created_at, 'created', b.status, 'booked 8 accelerators', '{}', b.id"
        " FROM brokers_booking b",
    )
    step(
        "ledger slots (now -1 d .. +2 d)",
        "INSERT INTO brokers_poolslot (slot_start, capacity, reserved, pool_id)"
        " SELECT s, p.accelerators, LEAST(SUM(a.accelerators), p.accelerators), a.pool_id"
        " FROM brokers_allocation a JOIN brokers_booking b ON b.id = a.booking_id"
        " JOIN registry_pool p ON p.id = a.pool_id,"
        " generate_series(date_trunc('hour', a.start), a.\"end\" - interval '1 second',"
        "   interval '15 minutes') s"
        " WHERE b.status IN ('confirmed', 'running') AND a.\"end\" > now() - interval '1 day'"
        "   AND a.start < now() + interval '2 days'"
        " GROUP BY s, p.accelerators, a.pool_id",
    )
    step(
        "usage records",
        "INSERT INTO brokers_usagerecord (started_at, finished_at, accelerator_hours, cost,"
        " currency, allocation_id, organization_id)"
        ' SELECT a.start, a."end", 8 * extract(epoch FROM a."end" - a.start) / 3600,'
        " 80 * extract(epoch FROM a.\"end\" - a.start) / 3600, 'CNY', a.id, b.organization_id"
        " FROM brokers_allocation a JOIN brokers_booking b ON b.id = a.booking_id"
        " WHERE b.status = 'finished'",
    )
    step(
        "verification runs",
        "INSERT INTO verification_verificationrun (run_id, trigger, state, created_at, attempts,"
        " claimed_by, started_at, finished_at, verdict_reason, agent_endpoint, agent_id, seed,"
        " n, dtype, steps, k, rtt_ms, measured_tflops_per_accelerator,"
        " declared_tflops_per_accelerator, tolerance, freivalds, devices, sample,"
        " inventory_match, pool_id)"
        " SELECT gen_random_uuid(), 'submitted', 'passed', p.created_at, 1, 'bench:1',"
        " p.created_at, p.created_at + interval '1 minute', 'verified', '10.0.0.1:50051',"
        " 'bench', '42', 1024, 'bf16', 8, 8, 3.2, 290, 300, 0.8, '[]', '[]', '{}', '{}', p.id"
        " FROM registry_pool p",
    )
    step(
        "heartbeats (24 h, hourly)",
        "INSERT INTO verification_heartbeat (time, sent_at, agent_id, utilization,"
        " accelerators_healthy, accelerators_busy, pool_id)"
        " SELECT now() - h * interval '1 hour', NULL, 'bench', ((p.id + h) % 10) / 10.0,"
        " p.accelerators, (p.accelerators * ((p.id + h) % 10)) / 10, p.id"
        " FROM (SELECT * FROM registry_pool ORDER BY id LIMIT %s) p, generate_series(0, 23) h",
        [HEARTBEAT_POOLS],
    )
    step(
        "lifecycle transitions",
        "INSERT INTO registry_lifecycletransition (object_type, object_id, object_key,"
        " from_status, to_status, reason, door, time)"
        " SELECT 'registry.pool', p.id, p.national_id, t.f, t.t, 'bench', 'worker',"
        " p.created_at + t.o * interval '1 hour'"
        " FROM registry_pool p, (VALUES ('draft', 'submitted', 1), ('submitted', 'verifying', 2),"
        "   ('verifying', 'active', 3)) t(f, t, o) WHERE p.status <> 'draft'",
    )
    step(
        "change records",
        "INSERT INTO registry_changerecord (time, door, request_id, object_type, object_id,"
        " object_key, object_repr, action, before, after, owner_id)"
        " SELECT p.created_at + t.o * interval '1 hour', 'api', '', 'registry.pool', p.id,"
        " p.national_id, p.name, t.a, NULL, '{}', c.operator_id"
        " FROM registry_pool p JOIN registry_center c ON c.id = p.center_id,"
        " (VALUES ('create', 0), ('transition', 1)) t(a, o)",
    )
    with connection.cursor() as cur:
        cur.execute("ANALYZE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure(repeat: int) -> None:
    from django.core.cache import cache
    from django.db import connection
    from django.test import Client

    from brokers.models import Booking
    from registry.models import Center, Pool
    from verification.models import VerificationRun

    def client_for(username: str | None) -> Client:
        client = Client()
        if username:
            from django.contrib.auth import get_user_model

            user = get_user_model().objects.get(username=username)
            client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return client

    own_center = Center.objects.filter(operator__slug="op-0").order_by("national_id").first()
    own_pool = Pool.objects.filter(center=own_center).order_by("national_id").first()
    public_pool = (
        Pool.objects.filter(status="active", center__status="active").order_by("pk").last()
    )
    run = VerificationRun.objects.filter(pool=own_pool).first()
    booking = Booking.objects.filter(organization__slug="firm-0", status="running").first() or (
        Booking.objects.filter(organization__slug="firm-0").first()
    )
    start = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() + 3600))
    preview = (
        "/placement/?preview=1&accelerator_model=nvidia-a100-80g&count=8&gang_size=1"
        "&duration_hours=4&latency_class=training&max_centers=1&data_hub=BTH"
    )
    filtered = (
        "/capacity/?accelerator=nvidia-h100-sxm&hub=NX&origin=imported"
        "&min_a100_equivalents=10&status=active"
    )
    pages: list[tuple[str, str | None, str]] = [
        ("dashboard", None, "/"),
        ("dashboard (cache cleared)", None, "/#cold"),
        ("capacity search", None, "/capacity/"),
        ("capacity search, filtered", None, filtered),
        ("capacity search, page 1000", None, "/capacity/?page=1000"),
        ("capacity + free in window", "bench-firm", f"/capacity/?start={start}&hours=4"),
        ("centers (public)", None, "/centers/?mine=0"),
        ("pool (public)", None, f"/pools/{public_pool.national_id}/"),
        ("sign in", None, "/login/"),
        ("my centers", "bench-op", "/centers/"),
        ("center (owner)", "bench-op", f"/centers/{own_center.national_id}/"),
        ("my pools", "bench-op", "/pools/"),
        ("pool (owner: runs, heartbeats)", "bench-op", f"/pools/{own_pool.national_id}/"),
        ("verification run", "bench-op", f"/runs/{run.run_id}/"),
        ("bookings on my pools", "bench-op", "/bookings/"),
        ("change log", "bench-op", "/changes/"),
        ("organization", "bench-op", "/organization/"),
        ("API tokens", "bench-op", "/tokens/"),
        ("placement form", "bench-firm", "/placement/"),
        ("placement preview", "bench-firm", preview),
        ("my bookings", "bench-firm", "/bookings/"),
        ("booking", "bench-firm", f"/bookings/{booking.national_id}/"),
        ("booking events (poll)", "bench-firm", f"/bookings/{booking.national_id}/events/?after=0"),
        ("booking statuses (poll)", "bench-firm", f"/bookings/statuses/?ids={booking.national_id}"),
        ("all pools (staff)", "bench-staff", "/pools/"),
        ("all bookings (staff)", "bench-staff", "/bookings/"),
        ("change log (staff)", "bench-staff", "/changes/"),
    ]  # fmt: skip
    counts = {
        "pools": Pool.objects.count(),
        "bookings": Booking.objects.count(),
        "centers": Center.objects.count(),
    }
    print(
        f"\nportal page times, {counts['pools']:,} pools, {counts['centers']:,} centers, "
        f"{counts['bookings']:,} bookings; {repeat} requests per page after 3 warm-ups "
        "(in-process test client, PostgreSQL, DEBUG off); load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    header = (
        f"{'page':<32} {'as':<12} {'status':>6} {'queries':>7} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name, who, url in pages:
        client = client_for(who)
        cold = url.endswith("#cold")
        url = url.removesuffix("#cold")
        for _ in range(3):
            client.get(url)
        queries: list[str] = []

        def count(execute: Any, sql: str, *args: Any, q: list[str] = queries) -> Any:
            q.append(sql)
            return execute(sql, *args)

        if cold:
            cache.clear()
        with connection.execute_wrapper(count):
            status = client.get(url).status_code
        times = []
        for _ in range(repeat):
            if cold:
                cache.clear()
            started = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        p95 = percentile(times, 0.95)
        if not cold:
            worst = max(worst, p95)
        print(
            f"{name:<32} {who or 'anonymous':<12} {status:>6} {len(queries):>7} "
            f"{statistics.median(times):>8.1f} {p95:>8.1f} {max(times):>8.1f}",
            flush=True,
        )
    print(
        f"\nworst p95 (every page but the cold dashboard): {worst:.1f} ms; "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild", action="store_true", help="drop and rebuild the data set")
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per page")
    args = parser.parse_args()
    ensure_database(args.rebuild)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM registry_pool")
        have = cur.fetchone()[0]
    if have < POOLS:
        if have:
            raise SystemExit(f"{DB_URL} holds {have} pools, not {POOLS}: run with --rebuild")
        build()
    measure(args.repeat)


if __name__ == "__main__":
    main()
