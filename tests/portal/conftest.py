"""Portal fixtures: a browser-like client signed in as a persona, and a small world to look at.

The world (``world``) holds, for acme (alice, bob): a draft pool and an active pool with a passed
verification run, and a booking of 8 of its accelerators by deepai (dave); for rival (carol): a
draft pool and an active pool. Everyone may see active pools; only the owner and the platform see
drafts and verification evidence; a booking is seen by its firm, the operator of its pools (without
the workload specification) and the platform.
"""

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from registry.choices import Status


@pytest.fixture
def client_as() -> Callable[[Any], Client]:
    """A portal client with a session for ``user`` (anonymous when ``None``)."""

    def make(user: Any, *, enforce_csrf_checks: bool = False) -> Client:
        client = Client(enforce_csrf_checks=enforce_csrf_checks)
        if user is not None:
            client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return client

    return make


def book(user: Any, pool: Any, n: int, *, key: str, hours: float = 2.0) -> Any:
    """A booking of ``n`` accelerators of ``pool`` by ``user``'s firm, through the broker's
    service (door api), starting in an hour."""
    from django.utils import timezone

    from brokers import services
    from brokers.placement import WorkloadSpec

    spec = WorkloadSpec(
        accelerator_model=pool.accelerator.slug,
        count=n,
        earliest_start=timezone.now() + dt.timedelta(hours=1),
        duration=dt.timedelta(hours=hours),
        data_hub="BTH",
    )
    return services.booking_create(
        spec=spec, option=[(pool.national_id, n)], idempotency_key=key, actor=user, door="api"
    )


@pytest.fixture
def world(personas: dict[str, Any], acme: Any, rival: Any, make_pool: Any) -> dict[str, Any]:
    from verification.models import VerificationRun

    own_active = make_pool(acme, Status.ACTIVE)
    booking = book(personas["dave"], own_active, 8, key="world")
    return {
        "booking": booking,
        "own_draft": make_pool(acme, Status.DRAFT),
        "own_active": own_active,
        "foreign_draft": make_pool(rival, Status.DRAFT),
        "foreign_active": make_pool(rival, Status.ACTIVE),
        "own_run": VerificationRun.objects.create(
            pool=own_active, trigger="submitted", state="passed", verdict_reason="verified"
        ),
    }


@pytest.fixture(autouse=True)
def _fresh_caches(settings: Any) -> None:
    """Every test starts without cached figures: the dashboard's national aggregates, and the
    broker's per-process pool snapshot (off, as in tests/brokers: a pool a test creates must be
    a candidate at once, not after the snapshot's next refresh)."""
    from django.core.cache import cache

    from brokers.placement import catalog

    cache.clear()
    settings.BROKER_PLACEMENT_CACHE_SECONDS = 0
    catalog.invalidate()


# --- End to end: a real Celery worker and a simulated site agent -------------------------------

# The verifier (in the worker) and the simulated agent share one time scale, as in
# tests/verification/conftest.py: an A100 (312 TFLOPS) is emulated at ~31 MFLOPS per device, so
# the 8 devices of the one sampled node each run a chain of 12 products of 128 x 128 (~1.5 s).
# The agent reports itself simulated: the worker accepts it, as a demo or test deployment does.
E2E_TIME_SCALE = 1e-7
E2E_WORKER_SETTINGS = {
    "VERIFICATION_TIME_SCALE": str(E2E_TIME_SCALE),
    "VERIFICATION_MATRIX_SIZE": "128",
    "VERIFICATION_TARGET_SECONDS": "1.5",
    "VERIFICATION_SAMPLE_NODES": "1",
    "VERIFICATION_ACCEPT_SIMULATED": "True",
    "VERIFICATION_FREIVALDS_ROUNDS": "8",
    "VERIFICATION_MAX_RETRIES": "4",
    "VERIFICATION_TASK_TIME_LIMIT": "30",
    "VERIFICATION_RPC_TIMEOUT": "10",
}


@pytest.fixture(scope="session")
def portal_worker(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """A ``celery -A interconnect worker`` subprocess on the test database and the suite's Redis
    database; stopped (by its own pid) at the end of the session."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from django.conf import settings
    from django.db import connection

    if not settings.CELERY_BROKER_URL.startswith("redis://"):
        pytest.skip("the end-to-end test needs CELERY_BROKER_URL=redis://...")
    import redis

    # Messages left by an interrupted run would name rows that no longer exist.
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    with django_db_blocker.unblock():
        db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "PYTHONUNBUFFERED": "1",
        **E2E_WORKER_SETTINGS,
    }
    log = Path(tempfile.mkdtemp(prefix="portal-worker-")) / "worker.log"
    out = log.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "interconnect", "worker", "--pool=prefork",
         "--concurrency=1", "--loglevel=INFO", "--without-mingle", "--without-gossip",
         "--hostname", f"portal-e2e-{os.getpid()}@%h"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"celery worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    yield {"process": process, "log": log}
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    out.close()


@pytest.fixture
def simulated_agent() -> Any:
    """An honest simulated center (one A100 pool, 8 x 4, 312 TFLOPS declared) served by the real
    agent gRPC server on a free loopback port; yields its ``host:port``."""
    from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
    from agent.server import build_server

    config = AgentConfig(
        agent_id="portal-e2e",
        port=0,
        pools=(
            PoolConfig(
                key="nvidia-a100-80g",
                accelerator_model="nvidia-a100-80g",
                accelerators_per_node=8,
                nodes=4,
                declared_tflops_per_accelerator=312.0,
            ),
        ),
        simulation=SimulationConfig(mode=SimulationMode.HONEST, time_scale=E2E_TIME_SCALE),
        workload_startup_seconds=0.0,
        grace_seconds=0.0,
    )
    runtime = build_server("127.0.0.1:0", agent_config=config)
    yield f"127.0.0.1:{runtime.port}"
    runtime.stop(grace=0).wait()
