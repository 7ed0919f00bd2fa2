"""How often each cheat gets through verification, measured. Prints one table.

Every simulation mode of ``agent/simulation.py`` (honest, slow and each cheat), plus a declaration
above the catalog's datasheet, is played ``--runs`` times against the real verification service
(``verification.services.verification_run``, in this process, as the tests' ``run_directly``)
and a real simulated agent on a loopback gRPC server, at the tests' settings
(``tests/verification/conftest.py``: ``WORKER_SETTINGS``, time scale 1e-7, n = 128, a chain
sized for 1.5 s, one sampled node of 8 A100s, k = 8, ``VERIFICATION_OPEN_STEPS`` checked steps:
the setting's default, 3). Each row: how many runs the verifier
accepted (the false-acceptance rate of a cheat; the pass rate of honest) and the check that
stopped the others (the prefix of the verdict's reason).

    .venv/bin/python bench/verification_cheats.py               # SQLite in a temporary folder
    .venv/bin/python bench/verification_cheats.py --runs 5 --modes honest,cheat-skip
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_bench .venv/bin/python \\
        bench/verification_cheats.py

The PostgreSQL database is created if missing and must be one the bench may own. Each run uses
a fresh challenge (new seeds, new vectors); an agent serves all runs of its mode, so
cheat-replay replays its first chain from the second run on.
"""

from __future__ import annotations

import argparse
import collections
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The same Django set-up as the cost bench: SQLite in a temporary folder, or DATABASE_URL's.
from bench.verification_cost import setup_django  # noqa: E402

ABOVE_DATASHEET = "above-datasheet"
# The review's cheat recorded 4,295 TFLOPS for an H800; declared here for an H100 SXM, whose
# catalog BF16 peak is 989.4 (the test of the same name does the same).
ABOVE_DATASHEET_TFLOPS = 4295.0
# "flaky" is an honest agent with transient errors: retries are the task's business, not a
# verdict, so it is left out.
SKIPPED_MODES = ("flaky",)
# Rows run with composite steps on (VERIFICATION_MAX_INNER = 8; 1, off, by default), 8 products
# behind each commitment: the cheats that compute a step with less work.
# "honest-links" is the honest agent under the same plan.
HONEST_LINKS = "honest-links"
COMPOSITE_MODES = ("cheat-shortcut", "cheat-lowrank", "cheat-factored", HONEST_LINKS)


def apply_test_settings() -> dict[str, str]:
    """The verifier settings of the tests (as their autouse fixture applies them)."""
    from django.conf import settings

    from tests.verification.conftest import WORKER_SETTINGS

    for name, value in WORKER_SETTINGS.items():
        current = getattr(settings, name)
        typed = value == "True" if isinstance(current, bool) else type(current)(value)
        setattr(settings, name, typed)
    return WORKER_SETTINGS


class Bench:
    """Agents, centers and pools of the bench, one per row."""

    def __init__(self) -> None:
        from registry.choices import OrgKind
        from registry.models import Organization

        self.org, _ = Organization.objects.get_or_create(
            slug="bench-cheats", defaults={"name": "Bench cheats", "kind": OrgKind.OPERATOR}
        )
        self.stamp = int(time.time()) % 10000
        self.runtimes: list[object] = []
        self.rows = 0

    def agent_for(self, mode: str) -> str:
        """A fresh simulated agent in ``mode``; its ``host:port``."""
        from agent.config import SimulationMode
        from agent.server import build_server
        from tests.verification.conftest import agent_config

        if mode == ABOVE_DATASHEET:
            config = agent_config(
                model="nvidia-h100-sxm", declared_tflops=ABOVE_DATASHEET_TFLOPS, nodes=1
            )
        elif mode == HONEST_LINKS:
            config = agent_config(SimulationMode.HONEST)
        else:
            config = agent_config(SimulationMode(mode))
        for runtime in self.runtimes:  # the last run's agent (and its chains) goes
            runtime.stop(grace=0).wait()  # type: ignore[attr-defined]
        runtime = build_server("127.0.0.1:0", agent_config=config)
        self.runtimes = [runtime]
        return f"127.0.0.1:{runtime.port}"

    def pool_for(self, mode: str, endpoint: str) -> object:
        """A pool of ``mode``'s row whose center's agent is at ``endpoint``."""
        from registry.models import Accelerator, Center, Cluster, Pool
        from tests.verification.conftest import A100_TFLOPS

        if mode == ABOVE_DATASHEET:
            slug, declared, nodes = "nvidia-h100-sxm", ABOVE_DATASHEET_TFLOPS, 1
        else:
            slug, declared, nodes = "nvidia-a100-80g", A100_TFLOPS, 4
        self.rows += 1
        center = Center.objects.create(
            national_id=f"CN-B-C-{self.stamp:04d}{self.rows:03d}",
            operator=self.org,
            cluster=Cluster.objects.get(code="ZW"),
            name=f"bench cheats {self.stamp} {mode}",
            latitude=37.5,
            longitude=105.2,
            pue=1.2,
            green_power_share=0.5,
            agent_endpoint=endpoint,
        )
        return Pool.objects.create(
            national_id=f"{center.national_id}-P01",
            center=center,
            name=mode,
            accelerator=Accelerator.objects.get(slug=slug),
            accelerators_per_node=8,
            nodes=nodes,
            declared_tflops_per_accelerator=declared,
        )

    def move_agent(self, pool: object, endpoint: str) -> None:
        """Point the pool's center at a new agent."""
        from registry.models import Center

        Center.objects.filter(pk=pool.center_id).update(agent_endpoint=endpoint)  # type: ignore[attr-defined]
        pool.center.agent_endpoint = endpoint  # type: ignore[attr-defined]

    def stop(self) -> None:
        for runtime in self.runtimes:
            runtime.stop(grace=0).wait()  # type: ignore[attr-defined]


def verify_once(pool: object) -> tuple[str, str, float]:
    """One verification through the service: (state, reason, wall seconds)."""
    from registry.choices import Status
    from registry.models import Pool
    from verification import services
    from verification.choices import Trigger

    # Every run starts from `submitted`, as a fresh submission would (a failed pool cannot be
    # verified again without being submitted again).
    Pool.objects.filter(pk=pool.pk).update(status=Status.SUBMITTED)  # type: ignore[attr-defined]
    pool.refresh_from_db()  # type: ignore[attr-defined]
    started = time.perf_counter()
    run, _ = services.verification_request(
        pool=pool, trigger=Trigger.SUBMITTED, actor=None, door="worker"
    )
    services.verification_run(run_id=str(run.run_id), final_attempt=True)
    run.refresh_from_db()
    return run.state, run.verdict_reason, time.perf_counter() - started


def check_of(state: str, reason: str) -> str:
    """The check a verdict names: the reason's prefix before the first colon."""
    if state == "passed":
        return "passed (drift)" if reason.startswith("drift") else "passed"
    return reason.split(":", 1)[0].strip() or state


def upper_bound(accepted: int, runs: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound of a rate seen ``accepted`` times in ``runs``."""
    if accepted >= runs:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(runs, i) * p**i * (1 - p) ** (runs - i) for i in range(accepted + 1))

    low, high = accepted / runs, 1.0
    for _ in range(60):  # bisection: cdf falls as p grows
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 1 - confidence else (low, mid)
    return high


def main() -> None:
    from agent.config import SimulationMode

    modes = [m.value for m in SimulationMode if m.value not in SKIPPED_MODES]
    modes += [ABOVE_DATASHEET, HONEST_LINKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs per row (default 20)")
    parser.add_argument("--modes", default=",".join(modes), help="comma-separated rows")
    args = parser.parse_args()
    chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(modes))
    if unknown:
        parser.error(f"unknown modes {unknown}; known: {', '.join(modes)}")

    tmp = Path(tempfile.mkdtemp(prefix="verif-cheats-"))
    bench: Bench | None = None
    try:
        setup_django(tmp)
        worker_settings = apply_test_settings()
        from django.conf import settings
        from django.db import connection

        bench = Bench()
        results = []
        began = time.perf_counter()
        step_seconds = settings.VERIFICATION_MIN_STEP_SECONDS
        max_inner = settings.VERIFICATION_MAX_INNER
        for mode in chosen:
            # A minimum step no device meets: VERIFICATION_MAX_INNER products a commitment.
            links = mode in COMPOSITE_MODES
            settings.VERIFICATION_MIN_STEP_SECONDS = 1e6 if links else step_seconds
            settings.VERIFICATION_MAX_INNER = 8 if links else max_inner
            print(f"  {mode}" + (f" ({settings.VERIFICATION_MAX_INNER} links)" if links else ""))
            pool = bench.pool_for(mode, bench.agent_for(mode))
            checks: collections.Counter[str] = collections.Counter()
            accepted, seconds = 0, 0.0
            for run in range(args.runs):
                if run and mode != "cheat-replay":
                    # A fresh agent per run: a cheat's chain still running from the last run
                    # (cheat-one-device's) must not slow the next. cheat-replay keeps its
                    # agent, so it replays an earlier run's chain.
                    bench.move_agent(pool, bench.agent_for(mode))
                state, reason, wall = verify_once(pool)
                accepted += state == "passed"
                check = check_of(state, reason)
                if check not in checks:
                    print(f"    e.g. {reason[:160]}")
                checks[check] += 1
                seconds += wall
            results.append((mode, args.runs, accepted, checks, seconds / args.runs))
            elapsed = time.perf_counter() - began
            print(f"    {accepted}/{args.runs} accepted ({elapsed:.0f} s so far)", flush=True)
        vendor = connection.vendor
    finally:
        if bench is not None:
            bench.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        "False acceptance by cheat, real verification service against simulated agents "
        f"({vendor}; time scale {worker_settings['VERIFICATION_TIME_SCALE']}, "
        f"n {worker_settings['VERIFICATION_MATRIX_SIZE']}, chain "
        f"{worker_settings['VERIFICATION_TARGET_SECONDS']} s, "
        f"{worker_settings['VERIFICATION_SAMPLE_NODES']} sampled node of 8, "
        f"k {worker_settings['VERIFICATION_FREIVALDS_ROUNDS']})"
    )
    print(
        f"{'mode':<17} {'runs':>5} {'accepted':>9} {'rate':>6} {'95% up':>7} {'s/run':>6}  "
        "stopped by (verdict reason prefix: runs)"
    )
    for mode, runs, accepted, checks, per_run in results:
        caught = ", ".join(f"{name} {count}" for name, count in checks.most_common())
        print(
            f"{mode:<17} {runs:>5} {accepted:>9} {accepted / runs:>6.0%} "
            f"{upper_bound(accepted, runs):>7.0%} {per_run:>6.1f}  {caught}"
        )
    print(
        "(rate = accepted / runs: the pass rate for honest, the false-acceptance rate otherwise; "
        "95% up: its one-sided Clopper-Pearson upper bound; "
        f"{', '.join(COMPOSITE_MODES)}: {settings.VERIFICATION_MAX_INNER} products behind "
        "each commitment)"
    )


if __name__ == "__main__":
    main()
