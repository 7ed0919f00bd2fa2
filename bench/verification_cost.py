"""What verification costs the platform, under the chain protocol (issue 10). Prints four tables.

0. The yardstick of this run: numpy matmul GFLOPS of this machine (float32, float64).
1. Per precision and size: the verifier's CPU time (``time.process_time``) to check one device's
   chain against the agent's compute time for the same chain on the numpy backend
   (``agent.challenge.chain``, what ``agent.backends.NumpyBackend`` runs). The verifier's work is
   what ``verification.services`` does after the commitments are in: A and B from the seed,
   each opened product reassembled from its row blocks and hashed against its commitment,
   ``next_input`` of the step before, and Freivalds with k sign vectors, on every step.
2. The production plan (``plan_challenge`` at this process's settings, default: sample 2 nodes
   of 8 accelerators) of each catalog model declared at its datasheet peak: the honest chain's
   compute time at that speed, the bytes the verifier opens, and its CPU time extrapolated
   from table 1 (its work is O(n^2) per step: the per-step time of the largest measured FP32
   product times (n / measured n)^2).
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

Options: ``--precisions bf16,fp32``, ``--sizes 256,512``, ``--steps 4``, ``--k 8``,
``--pools 8,64,512``, ``--skip-cost``, ``--skip-pools``. The PostgreSQL database is created if
missing and must be one the bench may own.
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.challenge import (  # noqa: E402
    assemble,
    chain,
    digest,
    flops,
    inputs,
    next_input,
    precision,
    row_blocks,
)
from verification.freivalds import StepChecker  # noqa: E402

TARGET_SHARE = 0.05  # issue 10: the verifier spends at most 5 % of the agent's compute
# Table 3: an honest A100 (312 TFLOPS BF16) emulated at 312e12 * 3e-9 = 0.94 GFLOPS per device;
# a 64 x 64 product (0.52 MFLOP) takes 0.56 ms of simulated time, and a 4 s chain has 8 steps.
POOL_TIME_SCALE = 3e-9
POOL_MATRIX_SIZE = 64
POOL_TARGET_SECONDS = 4.0
A100_TFLOPS = 312.0


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


@dataclass
class Cost:
    name: str
    n: int
    steps: int
    agent_wall: float
    agent_cpu: float
    inputs: float
    hashing: float
    freivalds: float

    @property
    def verifier(self) -> float:
        return self.inputs + self.hashing + self.freivalds


def chain_cost(name: str, n: int, steps: int, k: int, seed: int = 20261130) -> Cost:
    """One device's chain: the agent computes it, the verifier checks every step of it."""
    wall, cpu = time.perf_counter(), time.process_time()
    products = list(chain(seed, n, name, steps))
    agent_wall, agent_cpu = time.perf_counter() - wall, time.process_time() - cpu
    # What the agent sends: its commitments and, when opened, the row blocks (not timed).
    cid = "bench"
    commitments = [
        digest(c, name, challenge_id=cid, device=0, step=t) for t, c in enumerate(products, 1)
    ]
    blocks = [list(row_blocks(c, name)) for c in products]
    rng = np.random.default_rng(7)

    started = time.process_time()
    a, b = inputs(seed, n, name)
    t_inputs = time.process_time() - started

    started = time.process_time()
    opened = []
    for t, parts in enumerate(blocks, 1):
        c = assemble(parts, n, name)
        if digest(c, name, challenge_id=cid, device=0, step=t) != commitments[t - 1]:
            raise SystemExit(f"{name} n={n}: step {t} does not match its commitment")
        opened.append(c)
    t_hash = time.process_time() - started

    started = time.process_time()
    checker = StepChecker(b, name, k=k, rng=rng)  # as the verifier does: B's side once a device
    for t, c in enumerate(opened, 1):
        x = a if t == 1 else next_input(opened[t - 2], name)
        if not all(v.passed for v in checker.check(x, c)):
            raise SystemExit(f"{name} n={n}: an honest step {t} failed Freivalds")
    t_freivalds = time.process_time() - started
    return Cost(name, n, steps, agent_wall, agent_cpu, t_inputs, t_hash, t_freivalds)


def cost_table(precisions: list[str], sizes: list[int], steps: int, k: int) -> list[Cost]:
    print()
    print(
        f"1. One device's chain of {steps} steps: the agent's compute (numpy backend, wall) "
        f"against the verifier's CPU time (every step opened, k = {k}); best of 3 below n = "
        "1024, else one run"
    )
    print(
        f"{'prec':>5} {'n':>5} {'agent s':>9} {'GFLOPS':>7} {'verifier s':>11} "
        f"{'inputs':>8} {'open+hash':>10} {'freivalds':>10} {'share':>7} {'<=5%':>5}"
    )
    costs = []
    for name in precisions:
        precision(name)  # a clear error for an unknown one
        list(chain(1, 64, name, 2))  # warm up: first calls of a dtype's kernels are slow
        for n in sizes:
            repeats = 3 if n < 1024 else 1
            runs = [chain_cost(name, n, steps, k) for _ in range(repeats)]
            cost = Cost(
                name,
                n,
                steps,
                min(r.agent_wall for r in runs),
                min(r.agent_cpu for r in runs),
                min(r.inputs for r in runs),
                min(r.hashing for r in runs),
                min(r.freivalds for r in runs),
            )
            costs.append(cost)
            share = cost.verifier / cost.agent_wall
            print(
                f"{name:>5} {n:>5} {cost.agent_wall:>9.4f} "
                f"{flops(n, steps) / cost.agent_wall / 1e9:>7.1f} {cost.verifier:>11.4f} "
                f"{cost.inputs:>8.4f} {cost.hashing:>10.4f} {cost.freivalds:>10.4f} "
                f"{_share(share):>7} {'yes' if share <= TARGET_SHARE else 'no':>5}"
            )
    print(
        "(share = verifier CPU / agent compute; the agent's numpy products are O(n^3), the "
        "verifier's work O(k n^2) per step)"
    )
    return costs


def plan_table(costs: list[Cost]) -> None:
    """Table 2: the production plan of each catalog model, verifier cost extrapolated."""
    from django.conf import settings

    from registry.data.accelerators import ACCELERATORS
    from registry.models import Accelerator, Pool
    from verification.services import plan_challenge

    fp32 = [c for c in costs if precision(c.name).accumulator.itemsize == 4]
    if not fp32:
        return
    ref = max(fp32, key=lambda c: (c.n, c.name == "bf16"))
    per_step = ref.verifier / ref.steps
    print()
    print(
        "2. Production plan (plan_challenge at this process's settings: target "
        f"{settings.VERIFICATION_TARGET_SECONDS:g} s, n {settings.VERIFICATION_MATRIX_SIZE}.."
        f"{settings.VERIFICATION_MAX_MATRIX_SIZE}, steps {settings.VERIFICATION_MIN_STEPS}.."
        f"{settings.VERIFICATION_MAX_STEPS}, {settings.VERIFICATION_SAMPLE_NODES} sampled nodes "
        f"of 8, challenge bytes <= {settings.VERIFICATION_MAX_CHALLENGE_BYTES / 2**30:g} GiB), "
        "each catalog model declared at its BF16 (else FP16) peak"
    )
    print(
        f"{'model':<24} {'prec':>4} {'TFLOPS':>7} {'n':>5} {'steps':>5} {'inner':>5} "
        f"{'devices':>7} "
        f"{'agent s':>9} {'opened GB':>10} {'verifier s*':>11} {'share':>9}"
    )
    fields = {f.name for f in Accelerator._meta.fields}
    for entry in ACCELERATORS:
        accelerator = Accelerator(**{k: v for k, v in entry.items() if k in fields})
        declared = next((p for p in ("bf16", "fp16", "fp32") if accelerator.peak_tflops(p)), "")
        if not declared:
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
        opened = len(plan.devices) * plan.steps * plan.n**2 * 4
        # A composite step costs the verifier one n x n by n x k product per chained product.
        verifier = len(plan.devices) * plan.steps * per_step * (plan.n / ref.n) ** 2 * plan.inner
        print(
            f"{entry['slug']:<24} {declared:>4} {peak:>7.1f} {plan.n:>5} {plan.steps:>5} "
            f"{plan.inner:>5} "
            f"{len(plan.devices):>7} {agent:>9.4f} {opened / 1e9:>10.1f} {verifier:>11.1f} "
            f"{_share(verifier / agent):>9}"
        )
    print(
        f"(* extrapolated: {per_step:.4f} s per {ref.name} step at n = {ref.n} (table 1) x "
        "(n / that n)^2 x devices x steps x inner (an upper bound: the chained products add only "
        "n x k work each); share = verifier / agent compute, all devices run "
        "at once, so the agent's wall time is one device's)"
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


def pool_table(sizes: list[int]) -> None:
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
    settings.VERIFICATION_FREIVALDS_ROUNDS = 8
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
        f"sized for {POOL_TARGET_SECONDS:g} s, k = 8, every step opened)"
    )
    print(
        f"{'devices':>7} {'nodes':>5} {'n':>4} {'steps':>5} {'chain s':>8} {'wall s':>7} "
        f"{'verifier CPU s':>15} {'agent CPU s':>12} {'verdict':>8}"
    )
    for devices, nodes, n, steps, chain_s, wall, cpu, agent_cpu, state, run in rows:
        print(
            f"{devices:>7} {nodes:>5} {n:>4} {steps:>5} {chain_s:>8.2f} {wall:>7.2f} "
            f"{cpu:>15.2f} {agent_cpu:>12.2f} {state:>8}"
        )
        if state != "passed":
            print(f"        ({run.verdict_reason})")
    print(
        "(wall: request to verdict; chain: the slowest device's last commitment on the "
        "verifier's clock; verifier CPU: this process (gRPC, hashing, Freivalds, database); "
        "agent CPU: the agent process's real numpy work and gRPC)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="bf16,fp16,fp32,fp64")
    parser.add_argument("--sizes", default="256,512,1024,2048")
    parser.add_argument("--steps", type=int, default=4, help="chain length of table 1")
    parser.add_argument("--k", type=int, default=8, help="Freivalds vectors per step")
    parser.add_argument("--pools", default="8,64,512", help="accelerators per pool, table 3")
    parser.add_argument("--skip-cost", action="store_true", help="skip tables 1 and 2")
    parser.add_argument("--skip-pools", action="store_true", help="skip table 3")
    args = parser.parse_args()

    marks = yardstick()
    print(
        f"0. This machine: {os.cpu_count()} CPUs, numpy matmul at n = 1024: "
        f"{marks['float32']:.1f} GFLOPS float32, {marks['float64']:.1f} GFLOPS float64 "
        f"(load average {os.getloadavg()[0]:.1f})"
    )
    costs: list[Cost] = []
    if not args.skip_cost:
        costs = cost_table(
            [p.strip() for p in args.precisions.split(",")],
            [int(s) for s in args.sizes.split(",")],
            args.steps,
            args.k,
        )
    tmp = Path(tempfile.mkdtemp(prefix="verif-cost-"))
    try:
        setup_django(tmp)
        if costs:
            plan_table(costs)
        if not args.skip_pools:
            pool_table([int(s) for s in args.pools.split(",")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
