"""What verification costs the platform. Prints two tables.

1. The verifier's cost of checking a claimed product C = A @ B with Freivalds' algorithm (k random
   vectors, with the rounding bound) against recomputing the product, at n = 512 ... 4096, both
   measured in this run on this machine, and their ratio.
2. How many pool verifications per minute one Celery worker (prefork, 2 children) sustains against
   simulated honest agents with a small challenge, end to end (queue -> claim -> gRPC -> Freivalds
   -> verdict in the database).

    .venv/bin/python bench/verification_cost.py                 # SQLite + file-system transport
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/ci_verif_bench \\
    CELERY_BROKER_URL=redis://127.0.0.1:6379/3 .venv/bin/python bench/verification_cost.py

Options: ``--sizes 512,1024``, ``--pools 40``, ``--skip-cost``, ``--skip-throughput``. The
PostgreSQL database is created if missing and must be one the bench may own.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.challenge import matrices, multiply  # noqa: E402
from verification.freivalds import freivalds, recompute_matches  # noqa: E402

KS = (8, 16, 32)


def best_of(repeats: int, fn: object) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def cost_table(sizes: list[int]) -> None:
    print("Verifier cost per challenge, float64, seconds (recompute: best of 3, 1 at n >= 4096;")
    print("Freivalds: best of 7)")
    head = f"{'n':>6} {'recompute':>10} " + " ".join(f"{'k=' + str(k):>9}" for k in KS)
    print(head + "   " + " ".join(f"{'ratio k=' + str(k):>11}" for k in KS))
    for n in sizes:
        a, b = matrices(20261123, n, "float64")
        c = multiply(a, b)
        repeats = 1 if n >= 4096 else 3
        recompute = best_of(
            repeats, lambda a=a, b=b, c=c: recompute_matches(a, b, c, dtype="float64")
        )
        rng = np.random.default_rng(1)
        # Freivalds is cheap: more repeats make its best time robust to a busy machine.
        checks = [
            best_of(
                7,
                lambda a=a, b=b, c=c, k=k, r=rng: freivalds(a, b, c, k=k, rng=r, dtype="float64"),
            )
            for k in KS
        ]
        ratios = " ".join(f"{recompute / t:>10.1f}x" for t in checks)
        print(
            f"{n:>6} {recompute:>10.3f} " + " ".join(f"{t:>9.4f}" for t in checks) + "   " + ratios
        )
    print("(ratio = recompute time / Freivalds time; both include the rounding bound)")


def throughput(pools: int, n: int, time_scale: float) -> None:
    """Queue ``pools`` verifications and time one worker through them."""
    env = dict(os.environ)
    tmp = Path(tempfile.mkdtemp(prefix="verif-bench-"))
    if "DATABASE_URL" not in env:
        env["INTERCONNECT_VAR_DIR"] = str(tmp)  # SQLite and the file-system queue live here
    elif env["DATABASE_URL"].startswith("postgres"):
        _ensure_database(env["DATABASE_URL"])
    env.update(
        VERIFICATION_TIME_SCALE=repr(time_scale),
        VERIFICATION_MATRIX_SIZE=str(n),
        VERIFICATION_REPETITIONS="1",
        VERIFICATION_FREIVALDS_ROUNDS="16",
        DJANGO_SETTINGS_MODULE="interconnect.settings",
        LOG_LEVEL="WARNING",
    )
    os.environ.update(env)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], env=env, check=True, cwd=ROOT)
    subprocess.run([*manage, "seed_national_topology", "-v0"], env=env, check=True, cwd=ROOT)

    import django

    django.setup()
    from django.db import connection

    from agent.config import AgentConfig, PoolConfig, SimulationConfig
    from agent.server import build_server
    from registry.choices import OrgKind, Status
    from registry.models import Accelerator, Center, Cluster, Organization, Pool
    from verification.choices import FINISHED_STATES, Trigger
    from verification.models import VerificationRun
    from verification.services import verification_request

    a100 = Accelerator.objects.get(slug="nvidia-a100-80g")
    org, _ = Organization.objects.get_or_create(
        slug="bench-operator", defaults={"name": "Bench operator", "kind": OrgKind.OPERATOR}
    )
    stamp = int(time.time())
    agents, queued = [], []
    for i in range(pools):
        config = AgentConfig(
            agent_id=f"bench-{i}",
            port=0,
            pools=(
                PoolConfig(
                    key="a100",
                    accelerator_model=a100.slug,
                    accelerators_per_node=8,
                    nodes=2,
                    declared_tflops_per_accelerator=312.0,
                ),
            ),
            simulation=SimulationConfig(time_scale=time_scale),
            grace_seconds=0.0,
        )
        runtime = build_server("127.0.0.1:0", agent_config=config)
        agents.append(runtime)
        center = Center.objects.create(
            national_id=f"CN-B-B-{stamp % 10000:04d}{i:03d}",
            operator=org,
            cluster=Cluster.objects.get(code="ZW"),
            name=f"bench {stamp} {i}",
            latitude=37.5,
            longitude=105.2,
            pue=1.2,
            green_power_share=0.5,
            agent_endpoint=f"127.0.0.1:{runtime.port}",
        )
        pool = Pool.objects.create(
            national_id=f"{center.national_id}-P01",
            center=center,
            name="bench",
            accelerator=a100,
            accelerators_per_node=8,
            nodes=2,
            declared_tflops_per_accelerator=312.0,
        )
        Pool.objects.filter(pk=pool.pk).update(status=Status.SUBMITTED)
        pool.refresh_from_db()
        queued.append(pool)

    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "interconnect",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "WARNING",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # let the worker boot before the clock starts
        started = time.perf_counter()
        runs = [
            verification_request(pool=p, trigger=Trigger.SCHEDULED, actor=None, door="cli")[0]
            for p in queued
        ]
        ids = [r.pk for r in runs]
        while VerificationRun.objects.filter(pk__in=ids, state__in=FINISHED_STATES).count() < len(
            ids
        ):
            if time.perf_counter() - started > 600:
                raise SystemExit("throughput bench: runs did not finish in 10 minutes")
            time.sleep(0.2)
        elapsed = time.perf_counter() - started
        passed = VerificationRun.objects.filter(pk__in=ids, state="passed").count()
        compute = 2 * n**3 / (312e12 * time_scale)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        for runtime in agents:
            runtime.stop(grace=0)
        connection.close()
        shutil.rmtree(tmp, ignore_errors=True)
    vendor = connection.vendor
    print()
    print("Verifications per minute, one worker (prefork, 2 children), honest simulated agents")
    print(
        f"{'database':>10} {'pools':>6} {'n':>5} {'agent compute s':>16} {'elapsed s':>10} "
        f"{'passed':>7} {'per minute':>11}"
    )
    print(
        f"{vendor:>10} {pools:>6} {n:>5} {compute:>16.3f} {elapsed:>10.1f} {passed:>7} "
        f"{pools / elapsed * 60:>11.0f}"
    )


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="512,1024,2048,4096")
    parser.add_argument("--pools", type=int, default=40)
    parser.add_argument("--n", type=int, default=192, help="challenge size of the throughput run")
    parser.add_argument("--time-scale", type=float, default=2e-7)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if not args.skip_cost:
        cost_table([int(s) for s in args.sizes.split(",")])
    if not args.skip_throughput:
        throughput(args.pools, args.n, args.time_scale)


if __name__ == "__main__":
    main()
