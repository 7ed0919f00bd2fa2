"""How fast the broker places and books, measured against yardsticks taken in the same run.

Prints five tables:

1. placement latency p50/p99 (``brokers.placement.place``, in process, real PostgreSQL) with
   1,000, 10,000 and 100,000 active pools, brief (no counting of prefiltered pools) and
   explained, plus where the time goes at 100,000 pools (SQL vs Python, cProfile top entries);
2. booking throughput with 16 concurrent client processes calling ``booking_create`` (the
   function every door calls): spread over 10,000 pools, contended on 32 pools, and the
   query-then-book flow (placement + booking from a specification) at 10,000 pools; each run ends
   with the oversell sweep (must be 0);
3. ``pgbench -M prepared`` (TPC-B-like, 16 clients) on the same PostgreSQL in the same run;
4. gRPC ``QueryCapacity`` calls/s through ``run_broker --processes 2`` against a bare gRPC echo
   server with the same processes and threads, same client load;
5. the issue's targets, met or missed, and by how much.

    .venv/bin/python bench/broker_bench.py                       # about 5-8 minutes on 2 cores
    .venv/bin/python bench/broker_bench.py --quick               # smaller, for a smoke run
    BROKER_BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/ci_bench (default)

The database (and ``<name>_pgbench``) is dropped and rebuilt on every run: use one the bench may
own. Pools are made with ``INSERT ... SELECT generate_series``; a fifth of them get ledger slots
with some capacity already reserved, so free-capacity computation has work to do.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import multiprocessing as mp
import os
import pstats
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DB_URL = os.environ.get("BROKER_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ci_bench")
os.environ["DATABASE_URL"] = DB_URL
os.environ["BROKER_DISPATCH"] = "0"  # no agents here: bookings are not dispatched
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["DJANGO_SETTINGS_MODULE"] = "interconnect.settings"

CLIENTS = 16
MODELS = ["nvidia-a100-80g", "nvidia-h100-sxm", "huawei-ascend-910b", "nvidia-h20"]
HUBS = ["BTH", "YRD", "GBA", "CC", "IM", "GZ", "GS", "NX"]


# --- database ----------------------------------------------------------------------------------


def _admin_conn() -> Any:
    import psycopg

    url = urlparse(DB_URL)
    return psycopg.connect(
        host=url.hostname,
        port=url.port or 5432,
        user=url.username or "postgres",
        dbname="postgres",
        autocommit=True,
    )


def recreate(name: str) -> None:
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def setup_django() -> None:
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    call_command("seed_national_topology", verbosity=0)


def grow_pools(target: int, window_start: dt.datetime) -> None:
    """Add active centers (4 pools each) until ``target`` pools exist; reserve some slots."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM registry_pool")
        have = cur.fetchone()[0]
        if have >= target:
            return
        cur.execute("SELECT id FROM registry_organization WHERE slug = 'bench-operator'")
        row = cur.fetchone()
        if row is None:
            cur.execute(
                "INSERT INTO registry_organization (slug, name, kind, created_at) "
                "VALUES ('bench-operator', 'Bench Operator', 'operator', now()) RETURNING id"
            )
            row = cur.fetchone()
        operator = row[0]
        cur.execute("SELECT array_agg(id ORDER BY id) FROM registry_cluster")
        clusters = cur.fetchone()[0]
        cur.execute("SELECT array_agg(id ORDER BY id) FROM registry_accelerator")
        models = cur.fetchone()[0]
        cur.execute("SELECT coalesce(max(id), 0) FROM registry_center")
        last_center = cur.fetchone()[0]
        first, n = have // 4 + 1, (target - have + 3) // 4
        cur.execute(
            "INSERT INTO registry_center (status, status_reason, version, created_at, updated_at, "
            "national_id, name, latitude, longitude, pue, green_power_share, agent_endpoint, "
            "next_pool_seq, cluster_id, operator_id) "
            "SELECT 'active', '', 1, now(), now(), 'CN-BENCH-' || lpad(g::text, 7, '0'), "
            "'bench center ' || g, 35, 105, 1.2, (g %% 10) / 10.0, '', 5, "
            "(%s::bigint[])[1 + g %% array_length(%s::bigint[], 1)], %s "
            "FROM generate_series(%s, %s) g",
            [clusters, clusters, operator, first, first + n - 1],
        )
        cur.execute(
            "INSERT INTO registry_pool (status, status_reason, version, created_at, updated_at, "
            "national_id, name, accelerators_per_node, nodes, intra_node_interconnect, "
            "inter_node_interconnect, price_per_accelerator_hour, currency, "
            "declared_tflops_per_accelerator, verified_at, accelerator_id, center_id) "
            "SELECT 'active', '', 1, now(), now(), c.national_id || '-P0' || k, 'pool ' || k, 8, "
            "1 + (c.id + k) %% 8, 'nvlink', 'infiniband', "
            "5 + ((c.id * 7 + k * 13) %% 2500) / 100.0, 'CNY', 300, now(), "
            "(%s::bigint[])[1 + (c.id * 3 + k) %% array_length(%s::bigint[], 1)], c.id "
            "FROM registry_center c CROSS JOIN generate_series(1, 4) k WHERE c.id > %s",
            [models, models, last_center],
        )
        # A fifth of the new pools already have part of their capacity booked around the window.
        cur.execute(
            "INSERT INTO brokers_poolslot (pool_id, slot_start, capacity, reserved) "
            "SELECT p.id, s, p.accelerators, p.id %% p.accelerators "
            "FROM registry_pool p CROSS JOIN generate_series(%s::timestamptz, "
            "%s::timestamptz + interval '8 hours', interval '15 minutes') s "
            "WHERE p.center_id > %s AND p.id %% 5 = 0 ON CONFLICT DO NOTHING",
            [window_start, window_start, last_center],
        )
        cur.execute("ANALYZE")


def make_firms(n: int) -> list[tuple[int, int, str]]:
    """``n`` AI firms with one admin each: (org id, user id, token)."""
    from django.contrib.auth import get_user_model

    from registry import services as registry_services
    from registry.models import Membership, Organization

    out = []
    for i in range(n):
        org, _ = Organization.objects.get_or_create(
            slug=f"bench-firm-{i}", defaults={"name": f"Bench firm {i}", "kind": "ai_firm"}
        )
        user, _ = get_user_model().objects.get_or_create(username=f"bench-user-{i}")
        Membership.objects.get_or_create(user=user, defaults={"organization": org, "role": "admin"})
        _, token = registry_services.token_create(user=user, name="bench")
        out.append((org.pk, user.pk, token))
    return out


# --- 1. placement latency ----------------------------------------------------------------------


def random_spec(rng: random.Random, start: dt.datetime) -> Any:
    from brokers.placement import WorkloadSpec

    kwargs: dict[str, Any] = {
        "earliest_start": start + dt.timedelta(minutes=15 * rng.randrange(0, 16)),
        "duration": dt.timedelta(hours=rng.choice([1, 2, 4])),
    }
    if rng.random() < 0.2:
        kwargs["a100_equivalents"] = float(rng.choice([4, 8, 16]))
    else:
        kwargs["accelerator_model"] = rng.choice(MODELS)
        kwargs["count"] = rng.choice([1, 2, 4, 8, 16, 32])
    if rng.random() < 0.3:
        kwargs["hubs_allowed"] = tuple(rng.sample(HUBS, rng.randint(1, 3)))
    if rng.random() < 0.3:
        kwargs["data_hub"], kwargs["data_gb"] = rng.choice(HUBS), float(rng.choice([10, 500, 5000]))
    if rng.random() < 0.1:
        kwargs.update(allow_split=True, max_centers=3)
    return WorkloadSpec(**kwargs)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def placement_latency(
    start: dt.datetime, org_id: int, *, n: int, explain: bool, snapshot: bool = True
) -> tuple[float, float, float]:
    from django.conf import settings

    from brokers.placement import catalog, place

    settings.BROKER_PLACEMENT_CACHE_SECONDS = 600 if snapshot else 0
    catalog.invalidate()  # the first warm-up request loads the snapshot of this scale

    rng = random.Random(7)
    specs = [random_spec(rng, start) for _ in range(n + 20)]
    for s in specs[:20]:
        place(s, organization_id=org_id, explain=explain)
    times = []
    for s in specs[20:]:
        t0 = time.perf_counter()
        place(s, organization_id=org_id, explain=explain)
        times.append((time.perf_counter() - t0) * 1000)
    return pct(times, 0.5), pct(times, 0.99), statistics.mean(times)


def placement_profile(start: dt.datetime, org_id: int) -> str:
    """Where placement time goes: candidate selection (snapshot walk + fresh free-capacity
    query) vs the whole call, and cProfile's top."""
    from django.conf import settings

    from brokers.placement import catalog, place
    from brokers.placement.candidates import fetch_candidates

    settings.BROKER_PLACEMENT_CACHE_SECONDS = 600
    catalog.current()
    rng = random.Random(11)
    specs = [random_spec(rng, start) for _ in range(100)]
    t0 = time.perf_counter()
    for s in specs:
        fetch_candidates(s, limit=64)
    sql_ms = (time.perf_counter() - t0) * 10
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for s in specs:
        place(s, organization_id=org_id, explain=False)
    profiler.disable()
    total_ms = (time.perf_counter() - t0) * 10
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(8)
    top = [line for line in buf.getvalue().splitlines() if re.match(r"\s+\d", line)][:8]
    return (
        f"  candidate selection {sql_ms:.1f} ms (unprofiled) of {total_ms:.1f} ms per "
        f"placement (profiled), mean over 100\n  cProfile, top by own time:\n    "
        + "\n    ".join(top)
    )


# --- 2. booking throughput ---------------------------------------------------------------------


def _booking_client(
    kind: str,
    idx: int,
    user_id: int,
    pools: list[str],
    start: dt.datetime,
    seconds: float,
    go: Any,
    results: Any,
) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connections

    from brokers import services
    from brokers.errors import CapacityExhausted, RetryableConflict
    from brokers.placement import WorkloadSpec

    connections.close_all()
    user = get_user_model().objects.select_related("membership__organization").get(pk=user_id)
    rng = random.Random(idx)
    ok = refused = conflicts = 0
    go.wait()
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        key = f"{kind}-{idx}-{n}-{os.getpid()}"
        try:
            if kind == "flow":
                spec = WorkloadSpec(
                    accelerator_model=rng.choice(MODELS),
                    count=rng.choice([1, 2, 4]),
                    earliest_start=start + dt.timedelta(hours=rng.randrange(0, 48)),
                )
                services.booking_create(spec=spec, idempotency_key=key, actor=user, door="api")
            else:
                hour = rng.randrange(0, 24 * 14) if kind == "spread" else 0
                spec = WorkloadSpec(
                    accelerator_model="",
                    a100_equivalents=1.0,
                    earliest_start=start + dt.timedelta(hours=hour),
                )
                # Book exactly one accelerator of a chosen pool: the ledger path alone.
                services.booking_create(
                    spec=spec,
                    idempotency_key=key,
                    actor=user,
                    door="api",
                    option=[(rng.choice(pools), 1)],
                )
            ok += 1
        except CapacityExhausted:
            refused += 1
        except RetryableConflict:
            conflicts += 1
    results.put((ok, refused, conflicts))
    connections.close_all()


def booking_throughput(
    kind: str, users: list[int], pools: list[str], start: dt.datetime, seconds: float
) -> tuple[float, float, int, int]:
    from django.db import connections

    from brokers import ledger

    connections.close_all()  # nothing shared across fork
    ctx = mp.get_context("fork")
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_booking_client,
            args=(kind, i, users[i % len(users)], pools, start, seconds, go, results),
        )
        for i in range(CLIENTS)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)  # let every client connect and warm up
    go.set()
    totals = [results.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join()
    ok = sum(t[0] for t in totals)
    refused = sum(t[1] for t in totals)
    conflicts = sum(t[2] for t in totals)
    oversold = len(ledger.oversold_pools())
    return ok / seconds, (ok + refused) / seconds, conflicts, oversold


def booking_profile(user_id: int, pools: list[str], start: dt.datetime) -> str:
    """One client, sequential: what a booking costs in this process (cProfile top)."""
    from django.contrib.auth import get_user_model

    from brokers import services
    from brokers.placement import WorkloadSpec

    user = get_user_model().objects.get(pk=user_id)
    rng = random.Random(5)
    profiler = cProfile.Profile()
    n, t0 = 0, time.perf_counter()
    profiler.enable()
    while time.perf_counter() - t0 < 3:
        n += 1
        services.booking_create(
            spec=WorkloadSpec(
                a100_equivalents=1.0,
                earliest_start=start + dt.timedelta(hours=rng.randrange(24 * 20, 24 * 30)),
            ),
            idempotency_key=f"profile-{n}",
            actor=user,
            door="api",
            option=[(rng.choice(pools), 1)],
        )
    profiler.disable()
    ms = (time.perf_counter() - t0) * 1000 / n
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(6)
    top = [line for line in buf.getvalue().splitlines() if re.match(r"\s+\d", line)][:6]
    return f"  one client alone: {ms:.2f} ms per booking (profiled)\n    " + "\n    ".join(top)


# --- 3. pgbench --------------------------------------------------------------------------------


def pgbench(seconds: int) -> float:
    url = urlparse(DB_URL)
    name = url.path.lstrip("/") + "_pgbench"
    recreate(name)
    base = [
        "-h",
        url.hostname or "127.0.0.1",
        "-p",
        str(url.port or 5432),
        "-U",
        url.username or "postgres",
    ]
    subprocess.run(
        ["pgbench", *base, "-i", "-s", "16", "-q", name], check=True, capture_output=True
    )
    out = subprocess.run(
        [
            "pgbench",
            *base,
            "-M",
            "prepared",
            "-c",
            str(CLIENTS),
            "-j",
            "2",
            "-T",
            str(seconds),
            "-n",
            name,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    with _admin_conn() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return float(match[1]) if match else 0.0


# --- 4. gRPC: broker QueryCapacity vs a bare echo server ---------------------------------------


def echo_server(port: int, processes: int, workers: int) -> None:
    """A bare gRPC server (one method that returns its request), forked like run_broker."""
    import grpc

    def serve() -> None:
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            options=[("grpc.so_reuseport", 1)],
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        print("echo listening", flush=True)
        signal.sigwait([signal.SIGTERM])
        server.stop(0)

    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
            serve()
            os._exit(0)
        children.append(pid)
    signal.sigwait([signal.SIGTERM])
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)


def _rpc_client(target: str, kind: str, token: str, seconds: float, go: Any, results: Any) -> None:
    import grpc

    from protos import broker_pb2, broker_pb2_grpc

    channels = [grpc.insecure_channel(target) for _ in range(4)]
    counts = [0] * len(channels)
    go.wait()
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        rng = random.Random(i)
        if kind == "echo":
            call = channels[i].unary_unary("/bench.Echo/Echo")
            while time.monotonic() < end:
                call(b"x" * 64, timeout=10)
                counts[i] += 1
        else:
            stub = broker_pb2_grpc.BrokerStub(channels[i])
            meta = (("authorization", f"Bearer {token}"),)
            while time.monotonic() < end:
                stub.QueryCapacity(
                    broker_pb2.QueryCapacityRequest(
                        accelerator_model=rng.choice(MODELS), hub=rng.choice(HUBS), page_size=20
                    ),
                    metadata=meta,
                    timeout=10,
                )
                counts[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(channels))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(sum(counts))


def rpc_rate(target: str, kind: str, token: str, seconds: float) -> float:
    ctx = mp.get_context("spawn")  # clients hold gRPC objects: never fork them
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_rpc_client, args=(target, kind, token, seconds, go, results))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    time.sleep(3.0)
    go.set()
    total = sum(results.get(timeout=seconds + 60) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(args: list[str], ready: str, count: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen = 0
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while seen < count and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{args[:3]} exited")
        seen += ready in line
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def grpc_rates(token: str, seconds: float) -> tuple[float, float]:
    from django.db import connections

    connections.close_all()
    workers = 16
    port = _free_port()
    broker = _start(
        [
            sys.executable,
            "manage.py",
            "run_broker",
            "--port",
            str(port),
            "--processes",
            "2",
            "--workers",
            str(workers),
        ],
        "broker listening",
        2,
    )
    try:
        broker_rate = rpc_rate(f"127.0.0.1:{port}", "broker", token, seconds)
    finally:
        _stop(broker)
    port = _free_port()
    echo = _start(
        [sys.executable, __file__, "--echo-server", str(port), "--echo-workers", str(workers)],
        "echo listening",
        2,
    )
    try:
        echo_rate = rpc_rate(f"127.0.0.1:{port}", "echo", token, seconds)
    finally:
        _stop(echo)
    return broker_rate, echo_rate


# --- main --------------------------------------------------------------------------------------


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    if met:
        return "met"
    ratio = value / target if higher_is_better else target / value
    return f"MISSED ({ratio:.0%} of target)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller scales, shorter runs")
    parser.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--echo-workers", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server, 2, args.echo_workers)
        return
    scales = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    seconds = 4.0 if args.quick else 10.0
    n_place = 100 if args.quick else 300

    name = urlparse(DB_URL).path.lstrip("/")
    print(
        f"broker bench on {name} ({os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at start); every figure measured in this run"
    )
    recreate(name)
    setup_django()
    from django.db import connection
    from django.utils import timezone

    from registry.models import Pool

    start = timezone.now().replace(minute=0, second=0, microsecond=0) + dt.timedelta(hours=1)
    firms = make_firms(CLIENTS)
    org_id = firms[0][0]
    placement: dict[int, tuple[float, ...]] = {}
    loads: dict[int, float] = {}
    results: dict[str, Any] = {}
    for scale in scales:
        t0 = time.perf_counter()
        grow_pools(scale, start)
        built = time.perf_counter() - t0
        from brokers.placement import catalog

        t1 = time.perf_counter()
        catalog.load()
        loads[scale] = time.perf_counter() - t1
        brief = placement_latency(start, org_id, n=n_place, explain=False)
        explained = placement_latency(start, org_id, n=max(50, n_place // 3), explain=True)
        sql_only = placement_latency(start, org_id, n=n_place, explain=False, snapshot=False)
        placement[scale] = brief + explained + sql_only
        print(f"  {scale:>7} pools ready ({built:.0f} s); placement measured", flush=True)
        if scale == 10_000:
            pools = list(Pool.objects.values_list("national_id", flat=True))
            users = [f[1] for f in firms]
            results["spread"] = booking_throughput("spread", users, pools, start, seconds)
            # 32 hot pools, large enough that they are still accepting at the end of the run.
            hot = pools[:32]
            with connection.cursor() as cur:
                cur.execute(
                    "UPDATE registry_pool SET nodes = 1024 WHERE national_id = ANY(%s)", [hot]
                )
                cur.execute(
                    "UPDATE brokers_poolslot s SET capacity = p.accelerators FROM registry_pool p "
                    "WHERE p.id = s.pool_id AND p.national_id = ANY(%s)",
                    [hot],
                )
            results["contended"] = booking_throughput("contended", users, hot, start, seconds)
            results["flow"] = booking_throughput("flow", users, pools, start, seconds)
            results["booking_profile"] = booking_profile(users[0], pools, start)
            results["pgbench"] = pgbench(int(seconds))
            results["grpc"] = grpc_rates(firms[0][2], seconds)
    profile = placement_profile(start, org_id)

    print("\n1. placement latency (ms), in process")
    print(
        f"{'pools':>8} {'brief p50':>10} {'brief p99':>10} {'explained p50':>14} "
        f"{'explained p99':>14} {'SQL-only p50':>13} {'SQL-only p99':>13} {'snapshot load':>14}"
    )
    for scale, v in placement.items():
        print(
            f"{scale:>8} {v[0]:>10.1f} {v[1]:>10.1f} {v[3]:>14.1f} {v[4]:>14.1f} "
            f"{v[6]:>13.1f} {v[7]:>13.1f} {loads[scale] * 1000:>11.0f} ms"
        )
    print(
        "  brief: options and per-pool rejections; explained: also counts the model's pools left\n"
        "  out, per reason; SQL-only: brief, without the per-process pool snapshot"
    )
    print(f"where the time goes at {scales[-1]} pools:\n{profile}")

    print(
        f"\n2. booking throughput, {CLIENTS} client processes, {seconds:.0f} s each, 10,000 pools"
    )
    print(f"{'run':<34} {'accepted/s':>10} {'answered/s':>10} {'aborted':>8} {'oversold':>9}")
    labels = {
        "spread": "spread (1 acc., random pool, 14 d)",
        "contended": "contended (32 pools, same hour)",
        "flow": "query-then-book (placement+book)",
    }
    for key, label in labels.items():
        ok, answered, conflicts, oversold = results[key]
        print(f"{label:<34} {ok:>10.0f} {answered:>10.0f} {conflicts:>8} {oversold:>9}")
    print(results["booking_profile"])

    print("\n3. yardstick: pgbench -M prepared, TPC-B-like, 16 clients, same PostgreSQL")
    print(f"  {results['pgbench']:.0f} transactions/s")

    broker_rate, echo_rate = results["grpc"]
    print("\n4. gRPC calls/s, 2 server processes x 16 threads, 4 client processes x 4 channels")
    print(f"  broker QueryCapacity (10,000 pools, model+hub, 20 per page): {broker_rate:.0f}/s")
    print(f"  bare echo server: {echo_rate:.0f}/s  -> ratio {broker_rate / echo_rate:.2f}")

    print(f"\n5. issue 4 targets (load average {os.getloadavg()[0]:.1f} at the end)")
    p99 = placement[scales[-1]][1]
    rows = [
        (f"placement p99 at {scales[-1]} pools <= 20 ms", f"{p99:.1f} ms", verdict(p99, 20, False)),
        (
            "bookings/s spread >= 1500",
            f"{results['spread'][0]:.0f}",
            verdict(results["spread"][0], 1500),
        ),
        (
            "bookings/s on 32 contended pools >= 500",
            f"{results['contended'][0]:.0f}",
            verdict(results["contended"][0], 500),
        ),
        (
            "query-then-book/s at 10,000 pools >= 300",
            f"{results['flow'][1]:.0f}",
            verdict(results["flow"][1], 300),
        ),
        (
            "gRPC capacity query >= 0.5 x echo",
            f"{broker_rate / echo_rate:.2f}",
            verdict(broker_rate / echo_rate, 0.5),
        ),
        (
            "nothing oversold",
            str(sum(results[k][3] for k in labels)),
            "met" if sum(results[k][3] for k in labels) == 0 else "MISSED",
        ),
    ]
    for target, value, status in rows:
        print(f"  {target:<44} {value:>10}  {status}")


if __name__ == "__main__":
    main()
