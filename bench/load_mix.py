"""Sustained load: REST queries, agent heartbeats and bookings at once, for a fixed time.

    .venv/bin/python bench/load_mix.py [--seconds 30] [--heartbeat-rate 20]

Starts the production-shaped processes as ``make up`` does (gunicorn with 2 workers, the gRPC
broker with 2 processes, the Telemetry server) against a PRIVATE PostgreSQL 15 cluster on a free
port, migrated and seeded here (nothing shared is touched). Then it runs, for ``--seconds``:

- REST readers (2 threads): pools, centers, summary and hubs lists;
- heartbeats (1 thread, paced at ``--heartbeat-rate`` per second): the Telemetry service, for
  the six pools of one center, as an agent would send them;
- bookings (2 threads): ``Book`` of 2 or 4 A100s over a two-day horizon on six 64-GPU pools,
  each with its own idempotency key; half are cancelled again (churn), and that ``Cancel`` is
  timed as part of the operation.

It prints one table row per kind: operations, errors and error rate, throughput (mean and the
lowest second after a 2 s warm-up: the rate *held*), and latency p50/p99, then a FIGURE line.
A booking refused for lack of capacity (RESOURCE_EXHAUSTED) is a valid answer, not an error.
Figures vary with the machine and what else runs on it (2 shared cores here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402

from brokers.client.client import BrokerClient, workload_spec  # noqa: E402
from protos import agent_pb2, agent_pb2_grpc  # noqa: E402
from tests.harness.platform import Platform, http_json, prepare_template  # noqa: E402
from tests.harness.postgres import PrivatePostgres  # noqa: E402
from tests.harness.procs import PYTHON, ProcessGroup, free_port, port_open, wait_until  # noqa: E402

SETUP = """
from django.contrib.auth import get_user_model
from registry import services
from registry.choices import Door
from registry.models import Accelerator, Center, Cluster, Pool
actor = get_user_model().objects.get(username="zhongwei")
center = services.center_register(actor=actor, door=Door.CLI, data={
    "cluster": Cluster.objects.get(code="ZW"), "name": "bench center", "latitude": 37.5,
    "longitude": 105.2, "pue": 1.2, "green_power_share": 0.5, "agent_endpoint": "127.0.0.1:9",
})
ids = []
for i in range(6):
    pool = services.pool_create(actor=actor, door=Door.CLI, center=center, data={
        "name": f"bench pool {i}", "accelerator": Accelerator.objects.get(slug="nvidia-a100-80g"),
        "accelerators_per_node": 8, "nodes": 8, "price_per_accelerator_hour": "10.00",
        "currency": "CNY", "declared_tflops_per_accelerator": 312.0,
    })
    ids.append(pool.national_id)
# Benchmark set-up only: the pools are bookable without running verification first.
Center.objects.filter(pk=center.pk).update(status="active")
Pool.objects.filter(national_id__in=ids).update(status="active")
RESULT = {"center": center.national_id, "pools": ids}
"""

REST_PATHS = [
    "/api/v1/pools/?limit=20",
    "/api/v1/centers/?limit=20",
    "/api/v1/summary/",
    "/api/v1/hubs/",
]


class Recorder:
    """(end time, latency, ok) of every operation of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rows: list[tuple[float, float, bool]] = []
        self.errors: list[str] = []  # the first few, printed under the table
        self.lock = threading.Lock()

    def timed(self, call: Callable[[], bool]) -> None:
        start = time.monotonic()
        try:
            ok = call()
            error = "" if ok else "unexpected answer"
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"[:300]
        end = time.monotonic()
        with self.lock:
            self.rows.append((end, end - start, ok))
            if error and len(self.errors) < 3:
                self.errors.append(error)

    def summary(self, t0: float, seconds: float, warmup: float = 2.0) -> dict[str, object]:
        rows = [r for r in self.rows if t0 <= r[0] < t0 + seconds]
        errors = sum(1 for r in rows if not r[2])
        per_second = [0] * int(seconds)
        for end, _, ok in rows:
            index = int(end - t0)
            if ok and 0 <= index < len(per_second):
                per_second[index] += 1
        held = per_second[int(warmup) :] or [0]
        latencies = sorted(r[1] for r in rows) or [0.0]
        return {
            "kind": self.kind,
            "per_second": per_second,
            "ops": len(rows),
            "errors": errors,
            "error_rate": round(errors / len(rows), 4) if rows else 0.0,
            "per_s_mean": round((len(rows) - errors) / seconds, 1),
            "per_s_held": min(held),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(
                1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1
            ),
        }


def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="ci-bench-"))
    procs = ProcessGroup(work)
    pg: PrivatePostgres | None = None
    try:
        pg = PrivatePostgres().init()
        pg.start()
        print(f"private PostgreSQL on port {pg.port}; migrating and seeding...", flush=True)
        prepare_template(pg, name="bench", var_dir=work)
        platform = Platform(pg=pg, dbname="bench", procs=procs, var_dir=work)
        setup = platform.django(SETUP)
        _, base = platform.start_web(workers=2)
        broker_port, telemetry_port = free_port(), free_port()
        for name, argv, port in (
            ("broker", ["run_broker", "--port", str(broker_port), "--processes", "2"], broker_port),
            ("telemetry", ["run_telemetry", "--port", str(telemetry_port)], telemetry_port),
        ):
            procs.start(name, [PYTHON, "manage.py", *argv], env=platform.env())
            wait_until(lambda p=port: port_open(p), timeout=60, what=name)
        figure = load(args, platform, setup, base, broker_port, telemetry_port)
    except BaseException:
        print(f"process logs kept in {work}", file=sys.stderr)
        raise
    else:
        shutil.rmtree(work, ignore_errors=True)
        return figure
    finally:
        procs.stop_all()
        if pg is not None:
            pg.destroy()


def load(
    args: argparse.Namespace,
    platform: Platform,
    setup: dict,
    base: str,
    broker_port: int,
    telemetry_port: int,
) -> dict[str, object]:
    stop = threading.Event()
    rest, beats, books = Recorder("rest_query"), Recorder("heartbeat"), Recorder("booking")
    operator, firm = platform.token("zhongwei"), platform.token("deepcurrent")
    refused = [0]  # bookings answered RESOURCE_EXHAUSTED (pools full over that window)

    def rest_reader(n: int) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            path = rng.choice(REST_PATHS)
            rest.timed(lambda p=path: http_json("GET", base + p, token=operator)[0] == 200)

    def heartbeats() -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{telemetry_port}")
        stub = agent_pb2_grpc.TelemetryStub(channel)
        metadata = (("authorization", f"Bearer {operator}"),)
        interval = 1.0 / args.heartbeat_rate
        next_at = time.monotonic()
        while not stop.is_set():

            def send() -> bool:
                sent = Timestamp()
                sent.GetCurrentTime()
                request = agent_pb2.SendHeartbeatRequest(
                    agent_id="bench-agent",
                    center_national_id=setup["center"],
                    sent_at=sent,
                    pools=[
                        agent_pb2.PoolHeartbeat(
                            pool_national_id=p,
                            pool_key=p,
                            utilization=0.5,
                            accelerators_healthy=8,
                            accelerators_busy=4,
                        )  # fmt: skip
                        for p in setup["pools"]
                    ],
                )
                stub.SendHeartbeat(request, metadata=metadata, timeout=5)
                return True

            beats.timed(send)
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
        channel.close()

    def booker(n: int) -> None:
        rng = random.Random(100 + n)
        start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
        start += dt.timedelta(hours=1)
        with BrokerClient(f"127.0.0.1:{broker_port}", firm, timeout=10) as client:
            j = 0
            while not stop.is_set():
                j += 1

                def book(key: str = f"bench-{n}-{j}") -> bool:
                    spec = workload_spec(
                        accelerator_model="nvidia-a100-80g",
                        count=rng.choice([2, 4]),
                        earliest_start=start + dt.timedelta(minutes=rng.randrange(0, 2880, 30)),
                        duration_seconds=rng.choice([3600, 7200]),
                    )
                    try:
                        booking = client.book(spec, idempotency_key=key)
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                            raise
                        with books.lock:
                            refused[0] += 1
                        return True
                    if rng.random() < 0.5:
                        client.cancel(booking.booking_id)
                    return True

                books.timed(book)

    threads = [threading.Thread(target=rest_reader, args=(n,)) for n in range(2)]
    threads += [threading.Thread(target=heartbeats)]
    threads += [threading.Thread(target=booker, args=(n,)) for n in range(2)]
    print(f"load for {args.seconds:.0f} s...", flush=True)
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    rows = [r.summary(t0, args.seconds) for r in (rest, beats, books)]
    header = ["kind", "ops", "errors", "error_rate", "per_s_mean", "per_s_held", "p50_ms", "p99_ms"]
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    for recorder in (rest, beats, books):
        for error in recorder.errors:
            print(f"  {recorder.kind} error: {error}")
    for row in rows:
        print(f"  {row['kind']} per second: {row.pop('per_second')}")
    print(f"  bookings refused for capacity (valid answers): {refused[0]}")
    figure = {
        "test": "L1.load_mix",
        "seconds": args.seconds,
        "rows": rows,
        "bookings_refused": refused[0],
    }
    print("\nFIGURE " + json.dumps(figure, separators=(",", ":")))
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--heartbeat-rate", type=float, default=20.0, help="heartbeats per second")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
