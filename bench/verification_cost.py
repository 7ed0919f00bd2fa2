"""What verification costs the platform, under the chain protocol (issue 10). Prints four tables
and a verdict against the issue's targets.

0. The yardstick of this run: numpy matmul GFLOPS of this machine (float32, float64).
1. Per precision and n, one device's chain **as production sizes it** for a device of this
   CPU's speed (``plan_challenge`` with n pinned, declared at the GFLOPS one numpy product of
   that size just measured: about ``VERIFICATION_TARGET_SECONDS`` of compute, ``inner``
   products behind each commitment so a committed step lasts ``VERIFICATION_MIN_STEP_SECONDS``)
   computed by the numpy backend's code (``agent.challenge.chain``), against the verifier's
   CPU time (``time.process_time``) running the very functions of ``verification.services``
   once the commitments are in: ``_choose_steps`` (``VERIFICATION_OPEN_STEPS`` checked steps,
   drawn now), ``_opened_products`` (each opened product reassembled from its row blocks and
   hashed against its commitment) and ``_check_chains`` (B, and A when step 1 is drawn, from the
   seed; Freivalds with k vectors on each checked step). Agent compute = min(wall, CPU) of the
   chain (both BLAS threads count in CPU time; wall grows when other work shares the cores);
   the verifier's figure is the median of 3 draws, timed after a pause of ``SPIN_SECONDS`` (the
   agent's idle OpenBLAS threads spin for a while after its chain: CPU time of this process
   that is not the verifier's).
2. The production plan (``plan_challenge`` at this process's settings) of each catalog model
   declared at its datasheet peak: an honest device's chain time at that speed and the
   verifier's CPU time per device, from the costs of its parts measured on this machine (B from
   the seed, one opened product, one check, one composite link) at n = 1024, times (n/1024)^2.
3. Whole-pool verifications of 8, 64 and 512 simulated accelerators (1, 8 and 64 nodes of 8,
   ``VERIFICATION_SAMPLE_NODES=0``: every node) through the real service
   (``verification.services.verification_run``) against an honest simulated agent: wall time,
   the verifier's CPU time, and the agent's. The agent is a ``python -m agent --simulate
   honest`` subprocess so that the verifier's CPU time is its own (the agent's is read from
   /proc). The time scale (3e-9: an A100 emulated at ~0.94 GFLOPS per device) and n = 64 keep
   the simulated agent's real numpy work for 512 devices well within a 2-core machine.

    .venv/bin/python bench/verification_cost.py                 # SQLite in a temporary folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/h_bench .venv/bin/python \\
        bench/verification_cost.py

Options: ``--precisions bf16,fp32``, ``--sizes 256,512``, ``--k 8``, ``--open-steps 4``
(``VERIFICATION_OPEN_STEPS`` for tables 1-3; default: the setting's), ``--pools 8,64,512``,
``--skip-cost``, ``--skip-pools``. The PostgreSQL database is created if missing and must be
one the bench may own.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.challenge import (  # noqa: E402
    assemble_rows,
    chain,
    digest,
    flops,
    input_matrix,
    link_signs,
    multiply,
    precision,
    row_blocks,
)
from verification.freivalds import StepChecker, one_blas_thread  # noqa: E402

TARGET_SHARE = 0.05  # issue 10: the verifier spends at most 5 % of the agent's compute
TARGET_POOL_SECONDS = 60.0  # issue 10: one worker verifies a 512-accelerator pool in a minute
# Table 3: an honest A100 (312 TFLOPS BF16) emulated at 312e12 * 3e-9 = 0.94 GFLOPS per device;
# a 64 x 64 product (0.52 MFLOP) takes 0.56 ms of simulated time, and a 4 s chain has 8 steps.
POOL_TIME_SCALE = 3e-9
POOL_MATRIX_SIZE = 64
POOL_TARGET_SECONDS = 4.0
A100_TFLOPS = 312.0
REFERENCE_N = 1024  # table 2's per-part costs are measured at this n
SPIN_SECONDS = 0.5  # table 1: the agent's BLAS threads go idle before the verifier is timed


def yardstick() -> dict[str, float]:
    """numpy matmul GFLOPS of this machine at n = 1024 (best of 3), float32 and float64."""
    out = {}
    for dtype in ("float32", "float64"):
        a = np.random.default_rng(1).standard_normal((1024, 1024)).astype(dtype)
        best = min(_timed(lambda a=a: a @ a) for _ in range(3))
        out[dtype] = 2 * 1024**3 / best / 1e9
    return out


def _timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def _cpu(fn: Any) -> tuple[float, Any]:
    started = time.process_time()
    result = fn()
    return time.process_time() - started, result


@dataclass
class Cost:
    name: str
    n: int
    steps: int
    inner: int
    checked: int
    opened: int
    agent_wall: float
    agent_cpu: float
    hashing: float
    checks: float

    @property
    def agent(self) -> float:
        """The agent's compute: min(wall, CPU) (see the module docstring)."""
        return min(self.agent_wall, self.agent_cpu)

    @property
    def verifier(self) -> float:
        return self.hashing + self.checks

    @property
    def share(self) -> float:
        return self.verifier / self.agent


def _plan(name: str, n: int, gflops: float) -> Any:
    """``plan_challenge`` for one device of ``gflops`` declared in ``name``, n pinned."""
    from django.conf import settings

    from registry.models import Accelerator, Pool
    from verification import services

    saved = (settings.VERIFICATION_MATRIX_SIZE, settings.VERIFICATION_MAX_MATRIX_SIZE)
    saved_min, saved_caps = services.MIN_MATRIX_SIZE, services.MAX_MATRIX_SIZE_BY_PRECISION
    services.MIN_MATRIX_SIZE = n  # n pinned: the plan neither halves nor doubles it
    services.MAX_MATRIX_SIZE_BY_PRECISION = {}  # nor caps it (a cost, not a challenge)
    saved_scale, saved_sample = settings.VERIFICATION_TIME_SCALE, settings.VERIFICATION_SAMPLE_NODES
    settings.VERIFICATION_MATRIX_SIZE = settings.VERIFICATION_MAX_MATRIX_SIZE = n
    settings.VERIFICATION_TIME_SCALE, settings.VERIFICATION_SAMPLE_NODES = 1.0, 1
    try:
        pool = Pool(
            accelerator=Accelerator(slug="host-cpu"),
            accelerators_per_node=1,
            nodes=1,
            declared_tflops_per_accelerator=gflops / 1000.0,
            declared_precision=name,
        )
        return services.plan_challenge(pool)
    finally:
        services.MIN_MATRIX_SIZE, services.MAX_MATRIX_SIZE_BY_PRECISION = saved_min, saved_caps
        settings.VERIFICATION_MATRIX_SIZE, settings.VERIFICATION_MAX_MATRIX_SIZE = saved
        settings.VERIFICATION_TIME_SCALE, settings.VERIFICATION_SAMPLE_NODES = (
            saved_scale,
            saved_sample,
        )


def chain_cost(name: str, n: int, k: int) -> Cost:
    """One device's production-sized chain: the agent computes it, the verifier checks it."""
    from verification import services

    x, b = input_matrix(3, 0, n, name), input_matrix(3, 1, n, name)
    one = sorted(_timed(lambda: multiply(x, b, name)) for _ in range(3))[1]  # the median
    plan = _plan(name, n, flops(n) / one / 1e9)
    seed = next(iter(plan.devices.values()))
    cid = "bench"
    device = next(iter(plan.devices))
    wall, cpu = time.perf_counter(), time.process_time()
    # The chain as the numpy backend computes it, hashing each product for the next input.
    products = list(
        chain(seed, plan.n, name, plan.steps, plan.inner, challenge_id=cid, device=device)
    )
    agent_wall, agent_cpu = time.perf_counter() - wall, time.process_time() - cpu
    # What the agent sends: its commitments and, when opened, the row blocks (not timed).
    answer = SimpleNamespace(
        digests={
            (device, t): digest(c, name, challenge_id=cid, device=device, step=t)
            for t, c in enumerate(products, 1)
        }
    )
    # The agent's idle OpenBLAS threads spin on for a while after its chain, and process_time
    # would charge that to the verifier, which runs on another machine in production and checks
    # on one BLAS thread (``one_blas_thread``).
    time.sleep(SPIN_SECONDS)
    draws = []
    for _ in range(3):
        opened = services._choose_steps(plan.steps)
        needed = sorted({s for t in opened for s in (t - 1, t) if s})
        blocks = {(device, s): list(row_blocks(products[s - 1], name)) for s in needed}
        hashing, opened_products = _cpu(
            lambda blocks=blocks: services._opened_products(blocks, plan, answer, cid)
        )
        evidence: dict[int, dict[str, Any]] = {device: {}}
        checks, _ = _cpu(
            lambda o=opened, p=opened_products, e=evidence: services._check_chains(
                p, answer.digests, plan, o, k, e
            )
        )
        draws.append((hashing + checks, hashing, checks, len(opened), len(needed)))
    _, hashing, checks, checked, opened_count = sorted(draws)[1]  # the median draw
    return Cost(
        name,
        plan.n,
        plan.steps,
        plan.inner,
        checked,
        opened_count,
        agent_wall,
        agent_cpu,
        hashing,
        checks,
    )


def cost_table(precisions: list[str], sizes: list[int], k: int) -> list[Cost]:
    from django.conf import settings

    print()
    print(
        "1. One device's chain as production sizes it for this CPU (target "
        f"{settings.VERIFICATION_TARGET_SECONDS:g} s, a committed step >= "
        f"{settings.VERIFICATION_MIN_STEP_SECONDS:g} s, steps {settings.VERIFICATION_MIN_STEPS}.."
        f"{settings.VERIFICATION_MAX_STEPS}): the agent's compute (numpy backend) against the "
        f"verifier's CPU time (VERIFICATION_OPEN_STEPS = {settings.VERIFICATION_OPEN_STEPS} "
        f"checked steps, k = {k}; median of 3 draws)"
    )
    print(
        f"{'prec':>5} {'n':>5} {'steps':>5} {'inner':>5} {'chk':>3} {'open':>4} "
        f"{'agent wall':>10} {'agent CPU':>9} {'GFLOPS':>7} {'verifier CPU':>12} "
        f"{'open+hash':>9} {'checks':>7} {'ratio':>7} {'<=5%':>5}"
    )
    costs = []
    for name in precisions:
        precision(name)  # a clear error for an unknown one
        list(chain(1, 64, name, 2))  # warm up: first calls of a dtype's kernels are slow
        for n in sizes:
            cost = chain_cost(name, n, k)
            costs.append(cost)
            gflops = flops(cost.n, cost.steps, cost.inner) / cost.agent_wall / 1e9
            print(
                f"{name:>5} {cost.n:>5} {cost.steps:>5} {cost.inner:>5} {cost.checked:>3} "
                f"{cost.opened:>4} {cost.agent_wall:>10.3f} {cost.agent_cpu:>9.3f} "
                f"{gflops:>7.1f} {cost.verifier:>12.4f} {cost.hashing:>9.4f} "
                f"{cost.checks:>7.4f} {_share(cost.share):>7} "
                f"{'yes' if cost.share <= TARGET_SHARE else 'no':>5}"
            )
    print(
        "(ratio = verifier CPU / the agent's compute, min(agent wall, agent CPU); open+hash: "
        "reassembling and hashing the opened products; checks: inputs from the seed and "
        "Freivalds, O(inner k n^2) per checked step, against the agent's inner 2 n^3 per step)"
    )
    return costs


@dataclass
class Parts:
    """CPU seconds of the verifier's parts at ``REFERENCE_N`` (table 2's model)."""

    b_side: float  # B from the seed and its side of the check, once per device
    opening: float  # one opened product: reassembled and hashed
    check: float  # one checked step of one product (conversions, X(Br), the bound)
    link: float  # one more chained product of a composite step


def measure_parts(name: str, k: int) -> Parts:
    n = REFERENCE_N
    rng = np.random.default_rng(5)

    def b_side() -> StepChecker:
        return StepChecker(input_matrix(1, 1, n, name), name, k=k, rng=rng)

    b = input_matrix(1, 1, n, name)
    checker = b_side()
    c = multiply(input_matrix(1, 0, n, name), b, name)
    blocks = list(row_blocks(c, name))
    signs = link_signs(1, n, 4, name, step=2)

    def opening() -> None:  # as services._opened_products: kept as its blocks, hashed
        digest(assemble_rows(blocks, n, name), name, challenge_id="p", device=0, step=1)

    def check(inner: int) -> None:  # as services._check_devices: X from the opened C_{t-1}
        h = digest(c, name, challenge_id="p", device=0, step=1)
        side = checker.input_side_of_product(c, h, inner, signs if inner > 1 else None)
        checker.verdict(checker.product_side(c), side)

    def best(fn: Any) -> float:
        return min(_cpu(fn)[0] for _ in range(3))

    time.sleep(SPIN_SECONDS)  # the two-thread product above: its BLAS threads go idle
    with one_blas_thread(n):  # as services._check_chains runs them
        one = best(lambda: check(1))
        four = best(lambda: check(4))
        side = best(b_side)
    return Parts(side, best(opening), one, max(0.0, (four - one) / 3))


def plan_table(k: int) -> None:
    """Table 2: the production plan of each catalog model, verifier cost from measured parts."""
    from django.conf import settings

    from registry.data.accelerators import ACCELERATORS
    from registry.models import Accelerator, Pool
    from verification.services import _choose_steps, plan_challenge

    parts = {p: measure_parts(p, k) for p in ("bf16", "fp16")}
    print()
    print(
        "2. Production plan (plan_challenge at this process's settings: target "
        f"{settings.VERIFICATION_TARGET_SECONDS:g} s, n {settings.VERIFICATION_MATRIX_SIZE}.."
        f"{settings.VERIFICATION_MAX_MATRIX_SIZE}, steps {settings.VERIFICATION_MIN_STEPS}.."
        f"{settings.VERIFICATION_MAX_STEPS}, inner <= {settings.VERIFICATION_MAX_INNER}, "
        f"{settings.VERIFICATION_SAMPLE_NODES} sampled nodes of 8, challenge bytes <= "
        f"{settings.VERIFICATION_MAX_CHALLENGE_BYTES / 2**30:g} GiB, "
        f"{settings.VERIFICATION_OPEN_STEPS} checked steps), each catalog model declared at its "
        "BF16 (else FP16) peak; verifier CPU per device from its parts measured here"
    )
    for name, part in parts.items():
        print(
            f"   parts at n = {REFERENCE_N}, {name}: B side {part.b_side:.4f} s, one opened "
            f"product {part.opening:.4f} s, one check {part.check:.4f} s, one more link "
            f"{part.link:.4f} s"
        )
    print(
        f"{'model':<24} {'prec':>4} {'TFLOPS':>7} {'n':>5} {'steps':>5} {'inner':>5} "
        f"{'devices':>7} {'chain s':>8} {'verifier s/dev':>14} {'ratio':>9} {'<=5%':>5}"
    )
    fields = {f.name for f in Accelerator._meta.fields}
    for entry in ACCELERATORS:
        accelerator = Accelerator(**{k: v for k, v in entry.items() if k in fields})
        declared = next((p for p in ("bf16", "fp16", "fp32") if accelerator.peak_tflops(p)), "")
        if declared not in parts:
            continue
        peak = float(accelerator.peak_tflops(declared) or 0.0)
        pool = Pool(
            accelerator=accelerator,
            accelerators_per_node=8,
            nodes=8,
            declared_tflops_per_accelerator=peak,
            declared_precision=declared,
        )
        plan = plan_challenge(pool)
        agent = flops(plan.n, plan.steps, plan.inner) / (peak * 1e12)
        checked = _choose_steps(plan.steps)
        opened = len({s for t in checked for s in (t - 1, t) if s})
        part = parts[declared]
        per_device = (plan.n / REFERENCE_N) ** 2 * (
            part.b_side
            + opened * part.opening
            + len(checked) * (part.check + (plan.inner - 1) * part.link)
        )
        ratio = per_device / agent
        print(
            f"{entry['slug']:<24} {declared:>4} {peak:>7.1f} {plan.n:>5} {plan.steps:>5} "
            f"{plan.inner:>5} {len(plan.devices):>7} {agent:>8.4f} {per_device:>14.2f} "
            f"{_share(ratio):>9} {'yes' if ratio <= TARGET_SHARE else 'no':>5}"
        )
    print(
        "(chain: one honest device at its datasheet peak; verifier s/dev: B side + opened "
        "products + checked steps x (one check + (inner - 1) links), x (n / 1024)^2; all devices "
        "compute at once, so a run's verifier CPU is devices x that, against devices x chain)"
    )


def _share(ratio: float) -> str:
    return f"{ratio:.1%}" if ratio < 10 else f"{ratio:,.0f}x"


# --- whole-pool verifications ------------------------------------------------------------------


def setup_django(tmp: Path) -> None:
    """Django on SQLite in ``tmp`` (or DATABASE_URL's database), migrated and seeded."""
    env = os.environ
    if "DATABASE_URL" not in env:
        env["INTERCONNECT_VAR_DIR"] = str(tmp)  # SQLite and the file-system queue live here
    elif env["DATABASE_URL"].startswith("postgres"):
        _ensure_database(env["DATABASE_URL"])
    env.setdefault("DJANGO_SETTINGS_MODULE", "interconnect.settings")
    env.setdefault("LOG_LEVEL", "WARNING")
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v0"], check=True, cwd=ROOT)
    subprocess.run(
        [*manage, "seed_national_topology", "-v0"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL
    )
    import django

    django.setup()
    import logging

    logging.disable(logging.WARNING)


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (and its reaped children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def start_agent(nodes: int) -> tuple[subprocess.Popen[str], str]:
    """An honest simulated A100 x 8 x ``nodes`` agent process; (process, host:port)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "--port",
            "0",
            "--log-level",
            "WARNING",
            "--simulate",
            "honest",
            "--time-scale",
            repr(POOL_TIME_SCALE),
            "--model",
            "nvidia-a100-80g",
            "--accelerators",
            "8",
            "--nodes",
            str(nodes),
            "--declared-tflops",
            str(A100_TFLOPS),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"listening on (\S+)", line)
    if not found:
        process.kill()
        raise SystemExit(f"the agent did not start: {line!r}")
    return process, found.group(1)


@dataclass
class PoolRow:
    devices: int
    wall: float
    cpu: float
    chain: float
    state: str


def pool_table(sizes: list[int], k: int) -> list[PoolRow]:
    from django.conf import settings
    from django.db import connection

    from registry.choices import OrgKind, Status
    from registry.models import Accelerator, Center, Cluster, Organization, Pool
    from verification import services
    from verification.choices import Trigger

    settings.VERIFICATION_TIME_SCALE = POOL_TIME_SCALE
    settings.VERIFICATION_MATRIX_SIZE = POOL_MATRIX_SIZE
    settings.VERIFICATION_TARGET_SECONDS = POOL_TARGET_SECONDS
    settings.VERIFICATION_SAMPLE_NODES = 0
    settings.VERIFICATION_ACCEPT_SIMULATED = True
    settings.VERIFICATION_FREIVALDS_ROUNDS = k
    org, _ = Organization.objects.get_or_create(
        slug="bench-cost", defaults={"name": "Bench cost", "kind": OrgKind.OPERATOR}
    )
    a100 = Accelerator.objects.get(slug="nvidia-a100-80g")
    stamp = int(time.time()) % 10000
    rows = []
    for i, accelerators in enumerate(sizes):
        nodes = max(1, accelerators // 8)
        process, endpoint = start_agent(nodes)
        try:
            center = Center.objects.create(
                national_id=f"CN-B-V-{stamp:04d}{i:03d}",
                operator=org,
                cluster=Cluster.objects.get(code="ZW"),
                name=f"bench cost {stamp} {i}",
                latitude=37.5,
                longitude=105.2,
                pue=1.2,
                green_power_share=0.5,
                agent_endpoint=endpoint,
            )
            pool = Pool.objects.create(
                national_id=f"{center.national_id}-P01",
                center=center,
                name="bench",
                accelerator=a100,
                accelerators_per_node=8,
                nodes=nodes,
                declared_tflops_per_accelerator=A100_TFLOPS,
            )
            Pool.objects.filter(pk=pool.pk).update(status=Status.SUBMITTED)
            pool.refresh_from_db()
            agent_before = _cpu_seconds(process.pid)
            wall, cpu = time.perf_counter(), time.process_time()
            run, _ = services.verification_request(
                pool=pool, trigger=Trigger.SUBMITTED, actor=None, door="worker"
            )
            services.verification_run(run_id=str(run.run_id), final_attempt=True)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            agent_cpu = _cpu_seconds(process.pid) - agent_before
            run.refresh_from_db()
        finally:
            process.terminate()
            process.wait(timeout=30)
        chain_s = max((d.get("seconds") or 0.0) for d in run.devices) if run.devices else 0.0
        rows.append(
            (8 * nodes, nodes, run.n, run.steps, chain_s, wall, cpu, agent_cpu, run.state, run)
        )
    print()
    print(
        f"3. Whole-pool verification, honest simulated A100 x 8 per node, every node challenged "
        f"({connection.vendor}; time scale {POOL_TIME_SCALE:g}, n from {POOL_MATRIX_SIZE}, chain "
        f"sized for {POOL_TARGET_SECONDS:g} s, k = {k}, VERIFICATION_OPEN_STEPS = "
        f"{settings.VERIFICATION_OPEN_STEPS})"
    )
    print(
        f"{'devices':>7} {'nodes':>5} {'n':>4} {'steps':>5} {'chain s':>8} {'wall s':>7} "
        f"{'verifier CPU s':>15} {'agent CPU s':>12} {'CPU/device ms':>13} {'verdict':>8}"
    )
    out = []
    for devices, nodes, n, steps, chain_s, wall, cpu, agent_cpu, state, run in rows:
        print(
            f"{devices:>7} {nodes:>5} {n:>4} {steps:>5} {chain_s:>8.2f} {wall:>7.2f} "
            f"{cpu:>15.2f} {agent_cpu:>12.2f} {cpu / devices * 1000:>13.2f} {state:>8}"
        )
        if state != "passed":
            print(f"        ({run.verdict_reason})")
        out.append(PoolRow(devices, wall, cpu, chain_s, str(state)))
    print(
        "(wall: request to verdict; chain: the slowest device's last commitment on the "
        "verifier's clock; verifier CPU: this process (gRPC, hashing, Freivalds, database); "
        "agent CPU: the agent process's real numpy work and gRPC)"
    )
    return out


def verdict(costs: list[Cost], pools: list[PoolRow]) -> None:
    """The MET / NOT MET lines against the issue's two targets."""
    print()
    if costs:
        worst = max(costs, key=lambda c: c.share)
        over = [f"{c.name} n={c.n} {_share(c.share)}" for c in costs if c.share > TARGET_SHARE]
        met = "MET" if not over else "NOT MET"
        print(
            f"{met}: verifier <= 5 % of the agent's compute (table 1, numpy agent on this CPU): "
            f"{len(costs) - len(over)} of {len(costs)} rows, worst {worst.name} n={worst.n} "
            f"{_share(worst.share)}" + (f"; over: {', '.join(over)}" if over else "")
        )
    if pools:
        largest = max(pools, key=lambda p: p.devices)
        ok = largest.cpu < TARGET_POOL_SECONDS and largest.state == "passed"
        print(
            f"{'MET' if ok else 'NOT MET'}: one worker verifies a {largest.devices}-accelerator "
            f"pool in under a minute of its own time (table 3): {largest.cpu:.2f} s of CPU, "
            f"{largest.wall:.2f} s wall, verdict {largest.state}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="bf16,fp16,fp32,fp64")
    parser.add_argument("--sizes", default="256,512,1024,2048")
    parser.add_argument("--k", type=int, default=8, help="Freivalds vectors per step")
    parser.add_argument(
        "--open-steps", type=int, default=None, help="VERIFICATION_OPEN_STEPS (default: setting)"
    )
    parser.add_argument("--pools", default="8,64,512", help="accelerators per pool, table 3")
    parser.add_argument("--skip-cost", action="store_true", help="skip tables 1 and 2")
    parser.add_argument("--skip-pools", action="store_true", help="skip table 3")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="verif-cost-"))
    try:
        setup_django(tmp)
        from django.conf import settings

        if args.open_steps is not None:
            settings.VERIFICATION_OPEN_STEPS = args.open_steps
        marks = yardstick()
        print(
            f"0. This machine: {os.cpu_count()} CPUs, numpy matmul at n = 1024: "
            f"{marks['float32']:.1f} GFLOPS float32, {marks['float64']:.1f} GFLOPS float64 "
            f"(load average {os.getloadavg()[0]:.1f})"
        )
        costs: list[Cost] = []
        pools: list[PoolRow] = []
        if not args.skip_cost:
            costs = cost_table(
                [p.strip() for p in args.precisions.split(",")],
                [int(s) for s in args.sizes.split(",")],
                args.k,
            )
            plan_table(args.k)
        if not args.skip_pools:
            pools = pool_table([int(s) for s in args.pools.split(",")], args.k)
        verdict(costs, pools)
        print(f"(load average at the end {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
