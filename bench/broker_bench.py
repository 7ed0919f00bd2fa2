"""How fast the broker places and books, measured against yardsticks taken in the same run.

Prints six tables:

1. placement latency p50/p99 (``brokers.placement.place``, in process, real PostgreSQL) at each
   scale (1,000, 10,000 and 100,000 active pools; ``--scales`` picks), brief and explained,
   plus where the time goes (SQL vs Python, cProfile top entries);
2. booking throughput in process: 16 client processes calling ``booking_create`` (the function
   every door calls): spread over 10,000 pools, contended on 32 pools, and query-then-book;
   one client alone under cProfile, with the database round trips per booking;
3. ``pgbench -M prepared`` (TPC-B-like, 16 clients) on the same PostgreSQL in the same run;
4. through gRPC end to end: ``run_broker --processes 2`` and 2 client processes x 4 threads
   (one channel each) booking one accelerator of a random pool (spread over 14 days), then on
   32 pools in one hour where every refusal cancels one of the client's bookings: bookings/s,
   latency p50/p99, refusals, errors by code; ``QueryCapacity`` calls/s against a bare gRPC
   echo server with the same processes and threads; how long a pool inserted (and then
   repriced) by raw SQL takes to show in ``QueryCapacity``; with ``--profile DIR``, the spread
   run, the contended run and the ``QueryCapacity`` run once more each under py-spy (flame
   graphs and summaries written to DIR, e.g. ``bench/profiles``: ``<label>``,
   ``<label>-contended``, ``<label>-query``);
5. ``WatchBooking``: ``--streams`` (1,000) streams on ONE broker process, one event recorded
   per booking, each in its own transaction: streams open, delay from commit to arrival;
6. "Targets": every target row of issue 14 with the figure measured in this run and its
   yardstick, the target, and ``met`` or ``MISSED``; under a missed row, with ``--profile``,
   the top entries (own and inclusive share) of the py-spy summary that shows what bounds it
   (``bench/targets.py``). ``--booking-only`` and ``--query-only`` end with it too, the rows
   they do not measure marked so.

Every booking run ends with the oversell sweep (``ledger.oversold_pools``), printed: it must be 0.

    .venv/bin/python bench/broker_bench.py --scales 1000,10000 --profile bench/profiles
    .venv/bin/python bench/broker_bench.py --quick               # smaller, for a smoke run
    .venv/bin/python bench/broker_bench.py --quick --scales 10000 --query-only  # QueryCapacity
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
from bench.targets import Profile, issue_targets, render, spy_profile  # noqa: E402

DB_URL = os.environ.get("BROKER_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ci_bench")
os.environ["DATABASE_URL"] = DB_URL
os.environ["BROKER_DISPATCH"] = "0"  # no agents here: bookings are not dispatched
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["DJANGO_SETTINGS_MODULE"] = "interconnect.settings"

CLIENTS = 16
# A booking of one accelerator of a chosen pool asks for this many A100-equivalents: less than
# any bench model's one accelerator is worth, so the option covers it (a chosen option must
# cover what its spec asks, as placement's own options do).
ONE_ACCELERATOR = 0.1
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
            "declared_tflops_per_accelerator, declared_precision, verified_at, accelerator_id, "
            "spot_discount_percent, center_id) "
            "SELECT 'active', '', 1, now(), now(), c.national_id || '-P0' || k, 'pool ' || k, 8, "
            "1 + (c.id + k) %% 8, 'nvlink', 'infiniband', "
            "5 + ((c.id * 7 + k * 13) %% 2500) / 100.0, 'CNY', 300, 'bf16', now(), "
            "(%s::bigint[])[1 + (c.id * 3 + k) %% array_length(%s::bigint[], 1)], 0, c.id "
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
                    a100_equivalents=ONE_ACCELERATOR,
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
    """One client, sequential: what a booking costs in this process (cProfile top) and how
    many statements it sends."""
    from django.contrib.auth import get_user_model
    from django.db import connection

    from brokers import booking_sql, services
    from brokers.placement import WorkloadSpec

    user = get_user_model().objects.get(pk=user_id)
    rng = random.Random(5)
    statements = [0]
    commits = [0]
    pipelines = booking_sql.pipelines_sent()

    def count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements[0] += 1
        return execute(sql, params, many, context)

    real_commit = connection.commit

    def counting_commit() -> None:
        commits[0] += 1
        real_commit()

    connection.commit = counting_commit  # type: ignore[method-assign]

    profiler = cProfile.Profile()
    n, t0 = 0, time.perf_counter()
    with connection.execute_wrapper(count):
        profiler.enable()
        while time.perf_counter() - t0 < 3:
            n += 1
            services.booking_create(
                spec=WorkloadSpec(
                    a100_equivalents=ONE_ACCELERATOR,
                    earliest_start=start + dt.timedelta(hours=rng.randrange(24 * 20, 24 * 30)),
                ),
                idempotency_key=f"profile-{n}",
                actor=user,
                door="api",
                option=[(rng.choice(pools), 1)],
            )
        profiler.disable()
    del connection.commit
    ms = (time.perf_counter() - t0) * 1000 / n
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(8)
    top = [line for line in buf.getvalue().splitlines() if re.match(r"\s+\d", line)][:8]
    # Round trips: each statement Django sent, the BEGIN and COMMIT of each transaction it
    # committed, and each pipeline of the one-round-trip booking (BEGIN, call, COMMIT at once).
    trips = (statements[0] + 2 * commits[0] + booking_sql.pipelines_sent() - pipelines) / n
    return (
        f"  one client alone: {ms:.2f} ms per booking (profiled), {trips:.1f} database round "
        "trips per booking\n    " + "\n    ".join(top)
    )


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


def echo_server(port: int, processes: int, workers: int, kind: str = "threads") -> None:
    """A bare gRPC server (one method that returns its request), forked like run_broker:
    ``threads``, grpc's classic server with ``workers`` threads; ``aio``, a grpc.aio server
    answering on its event loop (the broker's kind of server, without the thread hop)."""
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

    def serve_aio() -> None:
        import asyncio

        async def echo(req: bytes, ctx: Any) -> bytes:
            return req

        async def run() -> None:
            handler = grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
            server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
            server.add_generic_rpc_handlers((handler,))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            print("echo listening", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, signal.sigwait, [signal.SIGTERM])
            await server.stop(0)

        asyncio.run(run())

    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
            serve_aio() if kind == "aio" else serve()
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
    """Start ``args`` in a session of its own; return once ``ready`` was printed ``count``
    times (RuntimeError, the process stopped, if it exits or stays silent for 60 s)."""
    proc = subprocess.Popen(
        args,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    stream = proc.stdout
    lines: list[str] = []
    proc.lines = lines  # type: ignore[attr-defined]
    seen = threading.Semaphore(0)

    def keep() -> None:
        for line in stream:
            lines.append(line.rstrip())
            # Two processes printing at once can share a line ("echo listeningecho listening").
            for _ in range(line.count(ready)):
                seen.release()

    threading.Thread(target=keep, daemon=True).start()
    deadline = time.monotonic() + 60
    for _ in range(count):
        # Read in a thread: a server that never gets ready must not hang the bench.
        if not seen.acquire(timeout=max(0.0, deadline - time.monotonic())):
            _stop(proc)
            raise RuntimeError(f"{args[:3]} not ready after 60 s: {lines[-5:]}")
    return proc


def _start_echo(workers: int, kind: str) -> tuple[subprocess.Popen[str], int]:
    """A bare echo server (2 processes) and its port; started again once, on another port, if
    it hangs (a forked grpc.aio server sometimes never gets ready on the loaded machine)."""
    for attempt in range(2):
        port = _free_port()
        args = [sys.executable, __file__, "--echo-server", str(port)]
        args += ["--echo-workers", str(workers), "--echo-kind", kind]
        try:
            return _start(args, "echo listening", 2), port
        except RuntimeError as exc:
            if attempt:
                raise
            print(f"  {exc}; starting it again", flush=True)
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


# --- 5. bookings, watches and pool changes through gRPC, end to end ---------------------------


BOOK_PROCESSES, BOOK_THREADS = 2, 4  # 8 client threads in 2 processes of their own


def _book_client(
    target: str,
    kind: str,
    tokens: list[str],
    pools: list[str],
    start_ts: float,
    seconds: float,
    seed: int,
    go: Any,
    results: Any,
) -> None:
    """``BOOK_THREADS`` threads, each on its own channel (the kernel spreads the connections
    over the broker's processes), booking one accelerator of a random pool until time is up.
    ``contended``: every booking in the same hour, and a refusal cancels the thread's oldest
    booking (capacity keeps changing hands)."""
    from collections import Counter

    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from protos import broker_pb2 as pb
    from protos import broker_pb2_grpc

    out: list[tuple[int, int, int, Counter[str], list[float]]] = []
    lock = threading.Lock()

    def loop(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        channel = grpc.insecure_channel(target)
        stub = broker_pb2_grpc.BrokerStub(channel)
        meta = (("authorization", f"Bearer {tokens[(seed * BOOK_THREADS + i) % len(tokens)]}"),)
        mine: list[str] = []
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        ok = refused = cancels = 0
        # One untimed call first, so the connection exists before the clock starts.
        stub.QueryCapacity(pb.QueryCapacityRequest(page_size=1), metadata=meta, timeout=30)
        go.wait()
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
            hour = rng.randrange(0, 24 * 14) if kind == "spread" else 0
            stamp = Timestamp()
            stamp.FromSeconds(int(start_ts) + hour * 3600)
            request = pb.BookRequest(
                spec=pb.WorkloadSpec(
                    a100_equivalents=ONE_ACCELERATOR, earliest_start=stamp, duration_seconds=3600
                ),
                idempotency_key=f"g{kind}-{os.getpid()}-{i}-{n}",
                option=[pb.OptionChoice(pool=rng.choice(pools), accelerators=1)],
            )
            t0 = time.perf_counter()
            try:
                reply = stub.Book(request, metadata=meta, timeout=10)
                latencies.append((time.perf_counter() - t0) * 1000)
                ok += 1
                mine.append(reply.booking.booking_id)
            except grpc.RpcError as exc:
                latencies.append((time.perf_counter() - t0) * 1000)
                if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    errors[exc.code().name] += 1
                    continue
                refused += 1
                if kind == "contended" and mine:
                    try:
                        stub.CancelBooking(
                            pb.CancelBookingRequest(booking_id=mine.pop(0), reason="bench"),
                            metadata=meta,
                            timeout=10,
                        )
                        cancels += 1
                    except grpc.RpcError as cancel_exc:
                        errors["cancel " + cancel_exc.code().name] += 1
        channel.close()
        with lock:
            out.append((ok, refused, cancels, errors, latencies))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(BOOK_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(out)


def grpc_booking(
    target: str, kind: str, tokens: list[str], pools: list[str], start: dt.datetime, seconds: float
) -> dict[str, Any]:
    """Bookings/s, latency and errors of ``BOOK_PROCESSES`` x ``BOOK_THREADS`` gRPC clients;
    the oversell sweep after the run."""
    from collections import Counter

    from brokers import ledger

    ctx = mp.get_context("spawn")  # clients hold gRPC objects: never fork them
    go, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_book_client,
            args=(target, kind, tokens, pools, start.timestamp(), seconds, s, go, results),
        )
        for s in range(BOOK_PROCESSES)
    ]
    for p in procs:
        p.start()
    time.sleep(4.0)  # interpreters up, channels connected
    go.set()
    rows = [r for _ in procs for r in results.get(timeout=seconds + 120)]
    for p in procs:
        p.join()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    for row in rows:
        errors.update(row[3])
        latencies += row[4]
    return {
        "ok": sum(r[0] for r in rows) / seconds,
        "answered": len(latencies) / seconds,
        "refused": sum(r[1] for r in rows),
        "cancels": sum(r[2] for r in rows),
        "errors": dict(errors),
        "p50": pct(latencies, 0.5) if latencies else float("nan"),
        "p99": pct(latencies, 0.99) if latencies else float("nan"),
        "oversold": len(ledger.oversold_pools()),
    }


def _watch_client(
    target: str, token: str, ids: list[str], ready: Any, done: Any, results: Any
) -> None:
    """One WatchBooking stream per booking (grpc.aio, 8 channels); reports how many streams
    delivered their booking's past event, then the arrival time of the next event on each."""
    import asyncio
    from collections import Counter

    import grpc

    from protos import broker_pb2 as pb
    from protos import broker_pb2_grpc

    async def run() -> None:
        channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
        stubs = [broker_pb2_grpc.BrokerStub(c) for c in channels]
        meta = (("authorization", f"Bearer {token}"),)
        opened: set[str] = set()
        arrived: dict[str, float] = {}
        errors: Counter[str] = Counter()

        async def watch(k: int, booking_id: str) -> None:
            call = stubs[k % len(stubs)].WatchBooking(
                pb.WatchBookingRequest(booking_id=booking_id), metadata=meta, timeout=300
            )
            try:
                async for reply in call:
                    if reply.event.message.startswith("bench "):
                        arrived[booking_id] = time.time()
                        return
                    opened.add(booking_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    errors[exc.code().name] += 1
            finally:
                call.cancel()

        tasks = [asyncio.create_task(watch(k, b)) for k, b in enumerate(ids)]
        # Every stream open, or no new one for 5 s (a server that cannot hold them all).
        last, since = -1, time.monotonic()
        while len(opened) < len(ids) and time.monotonic() - since < 5:
            await asyncio.sleep(0.1)
            if len(opened) != last:
                last, since = len(opened), time.monotonic()
        ready.put((len(opened), dict(errors)))
        while not done.is_set():
            await asyncio.sleep(0.05)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in channels:
            await c.close()
        results.put((arrived, dict(errors)))

    asyncio.run(run())


def watch_latency(org_id: int, user_id: int, token: str, n: int) -> dict[str, Any]:
    """``n`` WatchBooking streams on ONE broker process; one event recorded per booking (each
    in its own transaction, one after the other); delay from each commit to its arrival."""
    from django.contrib.auth import get_user_model
    from django.db import connections
    from django.utils import timezone

    from brokers import ledger, services
    from brokers.choices import EventKind
    from brokers.models import Booking, BookingEvent

    now = timezone.now()
    made = Booking.objects.bulk_create(
        [
            Booking(
                national_id=f"BK-WATCH-{i:06d}",
                organization_id=org_id,
                created_by_id=user_id,
                door="api",
                idempotency_key=f"watch-{i}",
                spec={},
                window_start=now + dt.timedelta(days=40),
                window_end=now + dt.timedelta(days=40, hours=1),
                accelerators=1,
            )
            for i in range(n)
        ]
    )
    BookingEvent.objects.bulk_create(
        [BookingEvent(booking=b, kind=EventKind.CREATED, status=b.status) for b in made]
    )
    connections.close_all()
    port = _free_port()
    broker = _start(
        [sys.executable, "manage.py", "run_broker", "--port", str(port), "--processes", "1"],
        "broker listening",
        1,
    )
    ctx = mp.get_context("spawn")
    ready, done, results = ctx.Queue(), ctx.Event(), ctx.Queue()
    ids = [b.national_id for b in made]
    client = ctx.Process(
        target=_watch_client, args=(f"127.0.0.1:{port}", token, ids, ready, done, results)
    )
    client.start()
    try:
        opened, open_errors = ready.get(timeout=180)
        user = get_user_model().objects.get(pk=user_id)
        committed: dict[str, float] = {}
        t0 = time.perf_counter()
        for i, booking in enumerate(made):
            services.booking_record(booking=booking, kind=EventKind.WORKLOAD, message=f"bench {i}")
            committed[booking.national_id] = time.time()
        write_s = time.perf_counter() - t0
        time.sleep(3.0)
        done.set()
        arrived, errors = results.get(timeout=120)
        client.join(30)
    finally:
        _stop(broker)
    del user
    delays = [(arrived[b] - committed[b]) * 1000 for b in arrived]
    return {
        "streams": n,
        "opened": opened,
        "open_errors": open_errors,
        "delivered": len(delays),
        "within_100ms": sum(d <= 100 for d in delays),
        "p50": pct(delays, 0.5) if delays else float("nan"),
        "p99": pct(delays, 0.99) if delays else float("nan"),
        "max": max(delays) if delays else float("nan"),
        "events_per_s": n / write_s,
        "errors": errors,
        "oversold": len(ledger.oversold_pools()),
    }


def _visibility_client(target: str, token: str, commands: Any, answers: Any) -> None:
    """Polls QueryCapacity for the pool under a price cap no other pool meets, on 4 channels
    (spread over the broker's processes), until each has seen the expected price."""
    from decimal import Decimal

    import grpc

    from protos import broker_pb2 as pb
    from protos import broker_pb2_grpc

    channels = [grpc.insecure_channel(target) for _ in range(4)]
    stubs = [broker_pb2_grpc.BrokerStub(c) for c in channels]
    meta = (("authorization", f"Bearer {token}"),)
    while True:
        command = commands.get()
        if command is None:
            break
        pool, price, limit = command
        seen: dict[int, float] = {}
        end = time.monotonic() + limit
        while len(seen) < len(stubs) and time.monotonic() < end:
            for k, stub in enumerate(stubs):
                if k in seen:
                    continue
                reply = stub.QueryCapacity(
                    pb.QueryCapacityRequest(max_price="0.05", page_size=10),
                    metadata=meta,
                    timeout=10,
                )
                if any(
                    e.pool == pool and Decimal(e.price_per_accelerator_hour or "-1") == price
                    for e in reply.entries
                ):
                    seen[k] = time.time()
            time.sleep(0.01)
        answers.put(max(seen.values()) if len(seen) == len(stubs) else None)
    for c in channels:
        c.close()


def pool_visibility(target: str, token: str, limit: float) -> tuple[float | None, float | None]:
    """Seconds from the commit of a new pool (raw SQL, as any writer might) to its appearance in
    QueryCapacity on every channel, then from the commit of a price change to the new price."""
    from decimal import Decimal

    from django.db import connection

    ctx = mp.get_context("spawn")
    commands, answers = ctx.Queue(), ctx.Queue()
    client = ctx.Process(target=_visibility_client, args=(target, token, commands, answers))
    client.start()
    nid = f"CN-VISIBLE-{os.getpid()}"
    out: list[float | None] = []
    try:
        time.sleep(3.0)
        with connection.cursor() as cur:
            cur.execute(
                "INSERT INTO registry_pool (status, status_reason, version, created_at, "
                "updated_at, national_id, name, accelerators_per_node, nodes, "
                "intra_node_interconnect, inter_node_interconnect, price_per_accelerator_hour, "
                "currency, declared_tflops_per_accelerator, declared_precision, verified_at, "
                "accelerator_id, spot_discount_percent, center_id) SELECT 'active', '', 1, now(), "
                "now(), %s, 'visible', 8, 1, 'nvlink', 'infiniband', 0.01, 'CNY', 300, 'bf16', "
                "now(), accelerator_id, 0, center_id "
                "FROM registry_pool ORDER BY id LIMIT 1",
                [nid],
            )
        t0 = time.time()
        commands.put((nid, Decimal("0.01"), limit))
        seen = answers.get(timeout=limit + 60)
        out.append(None if seen is None else seen - t0)
        with connection.cursor() as cur:
            cur.execute(
                "UPDATE registry_pool SET price_per_accelerator_hour = 0.02 WHERE national_id = %s",
                [nid],
            )
        t0 = time.time()
        commands.put((nid, Decimal("0.02"), limit))
        seen = answers.get(timeout=limit + 60)
        out.append(None if seen is None else seen - t0)
    finally:
        commands.put(None)
        client.join(30)
    return out[0], out[1]


def profile_grpc_booking(
    target: str,
    broker_pid: int,
    tokens: list[str],
    pools: list[str],
    start: dt.datetime,
    seconds: float,
    out_dir: Path,
    label: str,
    kind: str = "spread",
) -> tuple[str, Profile | None]:
    """The ``kind`` run (spread, or contended on its 32 pools) once more, with py-spy sampling
    both broker processes (not timed): a flame graph (SVG) and collapsed stacks in
    ``out_dir``, and their summary."""

    def run() -> str:
        result = grpc_booking(target, kind, tokens, pools, start, seconds)
        return f"profiled {kind} run ({result['ok']:.0f} bookings/s under py-spy)"

    return _profiled(broker_pid, seconds, out_dir, label, run)


def profile_grpc_query(
    target: str, broker_pid: int, token: str, seconds: float, out_dir: Path, label: str
) -> tuple[str, Profile | None]:
    """The QueryCapacity run once more, with py-spy sampling both broker processes."""

    def run() -> str:
        rate = rpc_rate(target, "broker", token, seconds)
        return f"profiled QueryCapacity run ({rate:.0f} calls/s under py-spy)"

    # rpc_rate's clients take 3 s to start before they call: record that much longer.
    return _profiled(broker_pid, seconds + 3.0, out_dir, label, run)


def _profiled(
    broker_pid: int, seconds: float, out_dir: Path, label: str, run: Any
) -> tuple[str, Profile | None]:
    """``run()`` (which returns its headline) with py-spy sampling the broker's processes: a
    flame graph (SVG) and collapsed stacks in ``out_dir``, and their summary (as text, and as
    a :class:`Profile` for the Targets table; None without py-spy)."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "  py-spy not installed (pip install -e '.[dev]'): no profile", None
    out_dir.mkdir(parents=True, exist_ok=True)
    svg, raw = out_dir / f"{label}.svg", out_dir / f"{label}.collapsed.txt"
    common = ["record", "--pid", str(broker_pid), "--subprocesses", "--nonblocking", "-r", "200"]
    recorders = [
        subprocess.Popen(
            [spy, *common, "-d", str(int(seconds + 6)), "--format", fmt, "-o", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fmt, path in (("flamegraph", svg), ("raw", raw))
    ]
    time.sleep(1.0)
    headline = run()
    for r in recorders:
        try:
            r.wait(600)  # writing the flame graph takes minutes on a loaded machine
        except subprocess.TimeoutExpired:
            r.kill()
    profile = spy_profile(raw) if raw.exists() else Profile(0, [], [])
    summary_path = out_dir / f"{label}.summary.txt"
    profile.path = str(
        summary_path.relative_to(ROOT) if summary_path.is_relative_to(ROOT) else summary_path
    )
    summary = profile.text() if raw.exists() else "  (py-spy wrote nothing)"
    text = (
        f"{headline}; flame graph "
        f"{svg.relative_to(ROOT) if svg.is_relative_to(ROOT) else svg}\n{summary}"
    )
    summary_path.write_text(text + "\n")
    return text, profile


def grpc_phases(
    firms: list[tuple[int, int, str]],
    pools: list[str],
    start: dt.datetime,
    seconds: float,
    profile_dir: Path | None,
    label: str,
    booking_only: bool = False,
) -> dict[str, Any]:
    """Everything through ``run_broker --processes 2``, then the bare echo server's rate."""
    from django.db import connections

    connections.close_all()
    workers = 16
    tokens = [f[2] for f in firms]
    out: dict[str, Any] = {}
    broker, target = _start_broker(workers)
    try:
        out["spread"] = grpc_booking(target, "spread", tokens, pools, start, seconds)
        print("  gRPC spread measured", flush=True)
        # 32 pools of their own sizes (8-64 accelerators): they fill up, then every refusal
        # cancels a booking and the freed capacity is fought over.
        out["contended"] = grpc_booking(target, "contended", tokens, pools[32:64], start, seconds)
        print("  gRPC contended measured", flush=True)
        out["query"] = rpc_rate(target, "broker", tokens[0], seconds)
        if not booking_only:
            out["visibility"] = pool_visibility(target, tokens[0], 10.0 if seconds < 10 else 30.0)
        print(
            "  gRPC capacity queries measured"
            if booking_only
            else "  gRPC capacity queries and pool visibility measured",
            flush=True,
        )
        if profile_dir is not None:
            out["profile"], out["profile_summary"] = profile_grpc_booking(
                target, broker.pid, tokens, pools, start, seconds, profile_dir, label
            )
            # The contended run once more on its 32 pools (full by now: every refusal
            # cancels), so its row is explained by its own profile.
            out["profile_contended"], out["profile_contended_summary"] = profile_grpc_booking(
                target,
                broker.pid,
                tokens,
                pools[32:64],
                start,
                seconds,
                profile_dir,
                f"{label}-contended",
                kind="contended",
            )
            # And QueryCapacity, so that all three of its rows are explained by this run.
            out["profile_query"], out["profile_query_summary"] = profile_grpc_query(
                target, broker.pid, tokens[0], seconds, profile_dir, f"{label}-query"
            )
    finally:
        _stop(broker)
        time.sleep(0.5)
        out["group_commit"] = [
            line for line in getattr(broker, "lines", []) if line.startswith("group commit:")
        ]
    out.update(echo_rates(workers, tokens[0], seconds))
    return out


def _start_broker(workers: int) -> tuple[Any, str]:
    """``run_broker --processes 2`` on a free port; the process and its target."""
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
    return broker, f"127.0.0.1:{port}"


def echo_rates(workers: int, token: str, seconds: float) -> dict[str, float]:
    """The bare echo servers' call rates (threads and grpc.aio); ``echo`` is the faster, the
    yardstick."""
    out: dict[str, float] = {}
    for kind in ("threads", "aio"):
        echo, port = _start_echo(workers, kind)
        try:
            out[f"echo_{kind}"] = rpc_rate(f"127.0.0.1:{port}", "echo", token, seconds)
        finally:
            _stop(echo)
    out["echo"] = max(out["echo_threads"], out["echo_aio"])
    return out


def grpc_query_phase(
    token: str, seconds: float, profile_dir: Path | None, label: str
) -> dict[str, Any]:
    """Only ``QueryCapacity`` through ``run_broker --processes 2`` and the bare echo servers
    (``--query-only``), with an extra py-spy'd query run when ``profile_dir`` is given."""
    from django.db import connections

    connections.close_all()
    workers = 16
    out: dict[str, Any] = {}
    broker, target = _start_broker(workers)
    try:
        out["query"] = rpc_rate(target, "broker", token, seconds)
        print("  gRPC capacity queries measured", flush=True)
        if profile_dir is not None:
            out["profile"], out["profile_summary"] = profile_grpc_query(
                target, broker.pid, token, seconds, profile_dir, label
            )
    finally:
        _stop(broker)
    out.update(echo_rates(workers, token, seconds))
    return out


# --- main --------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "n/a" if value != value else f"{value:.0f}"  # NaN: nothing measured


def print_booking_rows(results: dict[str, Any], seconds: float) -> None:
    """The booking rows of tables 2, 3 and 4 (``--booking-only``); the Targets table follows."""
    g = results["grpc"]
    ok, _, aborted, oversold = results["spread"]
    print(f"\nbooking rows only, {seconds:.0f} s per run, 10,000 pools")
    print(
        f"  in process, {CLIENTS} client processes, spread: {ok:.0f} bookings/s "
        f"({aborted} aborted, {oversold} oversold); pgbench -M prepared: "
        f"{results['pgbench']:.0f} TPS -> {ok / results['pgbench']:.2f}x"
    )
    print(
        f"  through gRPC (run_broker --processes 2, {BOOK_PROCESSES} x {BOOK_THREADS} client "
        "threads):"
    )
    for key in ("spread", "contended"):
        r = g[key]
        print(
            f"    {key:<10} booked/s {r['ok']:>5.0f}  answered/s {r['answered']:>5.0f}  "
            f"refused {r['refused']:>5}  cancels {r['cancels']:>5}  p50 {r['p50']:.1f} ms  "
            f"p99 {r['p99']:.1f} ms  oversold {r['oversold']}  errors {r['errors'] or 'none'}"
        )
    for line in g.get("group_commit", []):
        print(f"    broker process: {line}")
    print(
        f"  QueryCapacity {g['query']:.0f}/s; bare echo: 16 threads {g['echo_threads']:.0f}/s, "
        f"grpc.aio {g['echo_aio']:.0f}/s -> {g['query'] / g['echo']:.2f}x"
    )
    if "profile" in g:
        print("  " + g["profile"].replace("\n", "\n  "))
    if "profile_contended" in g:
        print("  " + g["profile_contended"].replace("\n", "\n  "))
    if "profile_query" in g:
        print("  " + g["profile_query"].replace("\n", "\n  "))


def print_targets(results: dict[str, Any]) -> None:
    """The last table: every target row of issue 14, met or MISSED (``bench.targets``); under
    a missed row, what its profile shows bounds it."""
    g = results.get("grpc", {})
    summary = g.get("profile_summary")
    # The profiled run: the gRPC spread bookings (full and --booking-only runs), or the
    # QueryCapacity calls (--query-only).
    profiles = {} if summary is None else {"query" if "spread" not in g else "booking": summary}
    if g.get("profile_contended_summary") is not None:
        profiles["contended"] = g["profile_contended_summary"]
    if g.get("profile_query_summary") is not None:
        profiles["query"] = g["profile_query_summary"]
    print(f"\n{render(issue_targets(results), profiles)}")
    print(f"  load average at the end: {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller scales, shorter runs")
    parser.add_argument(
        "--scales", default="", help="pool counts for placement, e.g. 1000,10000 (10000 needed)"
    )
    parser.add_argument("--streams", type=int, default=1000, help="WatchBooking streams")
    parser.add_argument(
        "--profile", default="", help="py-spy the broker in an extra run; files in this folder"
    )
    parser.add_argument("--label", default="run", help="name of the profile files")
    parser.add_argument(
        "--booking-only",
        action="store_true",
        help="only the booking rows: gRPC spread and contended, QueryCapacity and echo, "
        "in-process spread and pgbench (no placement, streams, visibility)",
    )
    parser.add_argument(
        "--query-only",
        action="store_true",
        help="only QueryCapacity through gRPC and the bare echo servers (with --profile, the "
        "query run once more under py-spy)",
    )
    parser.add_argument("--echo-server", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--echo-workers", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--echo-kind", default="threads", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server(args.echo_server, 2, args.echo_workers, args.echo_kind)
        return
    scales = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    if args.scales:
        scales = sorted(int(x) for x in args.scales.split(","))
    if 10_000 not in scales:
        parser.error("--scales must include 10000 (the booking runs use it)")
    seconds = 4.0 if args.quick else 10.0
    n_place = 100 if args.quick else 300
    profile_dir = Path(args.profile).resolve() if args.profile else None

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
        if args.query_only:
            if scale == 10_000:
                q = grpc_query_phase(firms[0][2], seconds, profile_dir, args.label)
                print(
                    f"\nQueryCapacity only, {seconds:.0f} s per run, 10,000 pools (model+hub, 20 "
                    f"per page; 4 client processes x 4 channels): {q['query']:.0f}/s; bare echo: "
                    f"16 threads {q['echo_threads']:.0f}/s, grpc.aio {q['echo_aio']:.0f}/s -> "
                    f"{q['query'] / q['echo']:.2f}x"
                )
                if "profile" in q:
                    print("  " + q["profile"].replace("\n", "\n  "))
                print(f"  load average at the end: {os.getloadavg()[0]:.1f}")
                results["grpc"] = q
            continue
        if args.booking_only:
            if scale == 10_000:
                pools = list(Pool.objects.values_list("national_id", flat=True).order_by("id"))
                results["grpc"] = grpc_phases(
                    firms, pools, start, seconds, profile_dir, args.label, booking_only=True
                )
                users = [f[1] for f in firms]
                results["spread"] = booking_throughput("spread", users, pools, start, seconds)
                results["pgbench"] = pgbench(int(seconds))
            continue
        brief = placement_latency(start, org_id, n=n_place, explain=False)
        explained = placement_latency(start, org_id, n=max(50, n_place // 3), explain=True)
        sql_only = placement_latency(start, org_id, n=n_place, explain=False, snapshot=False)
        placement[scale] = brief + explained + sql_only
        print(f"  {scale:>7} pools ready ({built:.0f} s); placement measured", flush=True)
        if scale == 10_000:
            pools = list(Pool.objects.values_list("national_id", flat=True).order_by("id"))
            users = [f[1] for f in firms]
            # Through gRPC first, on pools nobody booked yet.
            results["grpc"] = grpc_phases(firms, pools, start, seconds, profile_dir, args.label)
            results["watch"] = watch_latency(org_id, firms[0][1], firms[0][2], args.streams)
            print("  WatchBooking streams measured", flush=True)
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
            print("  in-process bookings and pgbench measured", flush=True)
    if args.query_only:
        print_targets(results)
        return
    if args.booking_only:
        print_booking_rows(results, seconds)
        print_targets(results)
        return
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
        f"\n2. booking throughput in process, {CLIENTS} client processes, {seconds:.0f} s each, "
        "10,000 pools"
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

    g = results["grpc"]
    print(
        f"\n4. through gRPC: run_broker --processes 2 (16 threads each); {BOOK_PROCESSES} client "
        f"processes x {BOOK_THREADS} threads, one channel each, {seconds:.0f} s per run"
    )
    print(
        f"{'run':<34} {'booked/s':>9} {'answered/s':>10} {'refused':>8} {'cancels':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'oversold':>9}  errors"
    )
    grpc_labels = {
        "spread": "spread (1 acc., random pool, 14 d)",
        "contended": "32 pools, same hour, cancel on refusal",
    }
    for key, label in grpc_labels.items():
        r = g[key]
        print(
            f"{label:<34} {r['ok']:>9.0f} {r['answered']:>10.0f} {r['refused']:>8} "
            f"{r['cancels']:>8} {r['p50']:>7.1f} {r['p99']:>7.1f} {r['oversold']:>9}  "
            f"{r['errors'] or 'none'}"
        )
    print(
        f"  QueryCapacity (10,000 pools, model+hub, 20 per page), 4 client processes x 4 "
        f"channels: {g['query']:.0f}/s; bare echo servers, 2 processes each: 16 threads "
        f"{g['echo_threads']:.0f}/s, grpc.aio {g['echo_aio']:.0f}/s -> ratio to the faster "
        f"{g['query'] / g['echo']:.2f}"
    )
    new_pool, changed_pool = g["visibility"]
    limit = 10 if seconds < 10 else 30

    def seen(v: float | None) -> str:
        return f"> {limit} s (not seen)" if v is None else f"{v:.2f} s"

    print(
        f"  a pool inserted (raw SQL) seen by QueryCapacity on 4 channels after {seen(new_pool)};"
        f" its price changed, seen after {seen(changed_pool)}"
    )
    if "profile" in g:
        print("  " + g["profile"].replace("\n", "\n  "))
    if "profile_contended" in g:
        print("  " + g["profile_contended"].replace("\n", "\n  "))
    if "profile_query" in g:
        print("  " + g["profile_query"].replace("\n", "\n  "))

    w = results["watch"]
    print(
        f"\n5. WatchBooking: {w['streams']} streams on one broker process (run_broker "
        f"--processes 1), one event per booking committed one after the other "
        f"({w['events_per_s']:.0f} events/s)"
    )
    print(
        f"  streams open {w['opened']} of {w['streams']} ({w['open_errors'] or 'no errors'}); "
        f"events delivered {w['delivered']}, within 100 ms of commit {w['within_100ms']}; "
        f"delay p50 {_ms(w['p50'])} ms, p99 {_ms(w['p99'])} ms, max {_ms(w['max'])} ms; "
        f"oversold {w['oversold']}"
    )

    results["oversold_in_process"] = sum(results[k][3] for k in labels)
    print_targets(results)


if __name__ == "__main__":
    main()
