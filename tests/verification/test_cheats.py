"""Every cheat a center can try, played against the verifier: each must fail, and the reason must
name the check that caught it (README, "Threat model").

The cheats run as simulated agents (agent/simulation.py, one mode each) on real gRPC servers;
the verifier is the real Celery worker for the simulation modes, and the service itself for the
tests that change the verifier's settings (production time scale, simulated agents refused).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.backends import NumpyBackend, measure
from agent.config import SimulationMode
from registry import services as registry_services
from registry.choices import Door, Status
from registry.data.accelerators import ACCELERATORS as CATALOG
from registry.models import Accelerator, Pool
from tests.conftest import force_status
from tests.verification.conftest import agent_config, wait_finished, wait_for
from verification import services
from verification.choices import RunState, Trigger
from verification.models import VerificationRun

A100 = 312.0


def submit(pool: Pool, actor: Any) -> VerificationRun:
    registry_services.pool_submit(pool=pool, actor=actor, door=Door.API)
    return wait_for(lambda: VerificationRun.objects.filter(pool=pool).first(), what="a queued run")


def run_directly(pool: Pool, trigger: str = Trigger.SUBMITTED) -> VerificationRun:
    """One verification by the service in this process; the finished run."""
    run, _ = services.verification_request(pool=pool, trigger=trigger, actor=None, door="worker")
    services.verification_run(run_id=str(run.run_id), final_attempt=True)
    run.refresh_from_db()
    return run


# --- the simulation modes, through the real worker ----------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        # Sends every commitment at once, before computing: what it opens is not what it
        # committed (the review's cheat; the old protocol passed it at 4.3x an H800's peak).
        (SimulationMode.CHEAT_TIMING, "opening"),
        # Pads its health checks and computes at 60 %: nothing is subtracted, so it is slow.
        (SimulationMode.CHEAT_RTT, "throughput"),
        # Skips every other step: a skipped step is not X @ B of the one before.
        (SimulationMode.CHEAT_SKIP, "arithmetic"),
        # Computes 4.3x faster than an A100's datasheet: impossible.
        (SimulationMode.CHEAT_FAST, "impossible"),
        # FP8 inputs where BF16 was asked: residuals far above the BF16 bound.
        (SimulationMode.CHEAT_PRECISION, "arithmetic"),
        # One accelerator takes turns for the 8 of a node: an eighth of the throughput each.
        (SimulationMode.CHEAT_ONE_DEVICE, "throughput"),
        # Replays the chain of another device (and of earlier challenges).
        (SimulationMode.CHEAT_REPLAY, "arithmetic"),
        # One entry of the last product off by 1.0.
        (SimulationMode.CHEAT_ONE_ENTRY, "arithmetic"),
        (SimulationMode.CHEAT_WRONG, "arithmetic"),
        (SimulationMode.CHEAT_PARTIAL, "arithmetic"),
        # Zero products, no arithmetic: every input is still full-rank (protocol v4).
        (SimulationMode.CHEAT_DEGENERATE, "arithmetic"),
    ],
)
def test_every_cheat_fails_with_the_check_that_caught_it(
    mode: SimulationMode,
    reason: str,
    celery_worker: Any,
    start_agent: Any,
    pool_at: Any,
    alice: Any,
) -> None:
    pool = pool_at(alice.membership.organization, start_agent(agent_config(mode)))

    run = wait_finished(submit(pool, alice))

    pool.refresh_from_db()
    assert run.state == RunState.FAILED, run.verdict_reason
    assert run.verdict_reason.startswith(reason), run.verdict_reason
    assert pool.status == Status.FAILED
    assert pool.measured_tflops_per_accelerator is None


# --- settings of the verifier, through the service -------------------------------------------


@pytest.mark.django_db
def test_the_review_cheat_fails_at_production_settings(
    agent_process: Any, pool_at: Any, acme: Any, settings: Any
) -> None:
    """An H800 x 8 declaration, answered by an agent that commits before it computes and then
    multiplies on the host CPU, at VERIFICATION_TIME_SCALE=1.0 (the challenge is kept at n=256
    so that this machine's CPU can play the cheater in seconds). A cheater would not say it is
    simulated; simulated agents are let in here so that the challenge is what refuses it."""
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_MATRIX_SIZE = settings.VERIFICATION_MAX_MATRIX_SIZE = 256
    endpoint = agent_process(
        "--simulate",
        "cheat-timing",
        "--time-scale",
        "1.0",
        "--model",
        "nvidia-h800-sxm",
        "--accelerators",
        "8",
        "--nodes",
        "1",
        "--declared-tflops",
        "989.4",
    )
    pool = pool_at(
        acme,
        endpoint,
        accelerator=Accelerator.objects.get(slug="nvidia-h800-sxm"),
        nodes=1,
        declared_tflops_per_accelerator=989.4,
    )
    force_status(pool, Status.SUBMITTED)

    run = run_directly(pool)

    assert run.state == RunState.FAILED
    assert run.verdict_reason.startswith("opening"), run.verdict_reason
    assert run.time_scale == 1.0 and len(run.devices) == 8
    assert run.steps == settings.VERIFICATION_MAX_STEPS  # 128 steps of n = 256 for the CPU
    pool.refresh_from_db()
    assert pool.status == Status.FAILED and pool.measured_tflops_per_accelerator is None


@pytest.mark.django_db
def test_an_honest_numpy_agent_passes_what_this_cpu_really_does(
    agent_process: Any, pool_at: Any, acme: Any, settings: Any
) -> None:
    """A real agent (no simulation) on the numpy backend, at production settings, declaring half
    of what this machine measured a moment ago in FP32."""
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_ACCEPT_SIMULATED = False
    settings.VERIFICATION_TARGET_SECONDS = 1.5
    settings.VERIFICATION_MATRIX_SIZE = 512
    declared = round(0.5 * measure(NumpyBackend(), "fp32", n=512, steps=4), 6)
    cpu = Accelerator.objects.create(
        slug="test-host-cpu", vendor="Test", model="host CPU", origin="imported"
    )
    endpoint = agent_process(
        "--backend",
        "numpy",
        "--model",
        "test-host-cpu",
        "--accelerators",
        "1",
        "--nodes",
        "1",
        "--declared-tflops",
        str(declared),
    )
    pool = pool_at(
        acme,
        endpoint,
        accelerator=cpu,
        accelerators_per_node=1,
        nodes=1,
        declared_tflops_per_accelerator=declared,
        declared_precision="fp32",
    )
    force_status(pool, Status.SUBMITTED)

    run = run_directly(pool)

    assert run.state == RunState.PASSED, run.verdict_reason
    assert run.dtype == "fp32" and run.time_scale == 1.0
    assert run.inventory_match["simulated"] is False
    assert run.peak_tflops_per_accelerator is None  # no catalog figure: no peak to exceed
    assert run.measured_tflops_per_accelerator >= 0.8 * declared
    assert run.devices[0]["description"].startswith("numpy on CPU")


@pytest.mark.django_db
def test_a_simulated_agent_is_refused_outside_a_demo_or_a_test(
    start_agent: Any, pool_at: Any, acme: Any, settings: Any
) -> None:
    settings.VERIFICATION_ACCEPT_SIMULATED = False
    pool = force_status(pool_at(acme, start_agent(agent_config())), Status.SUBMITTED)

    run = run_directly(pool)

    assert run.state == RunState.FAILED
    assert run.verdict_reason.startswith("simulated agent"), run.verdict_reason


@pytest.mark.django_db
def test_a_declaration_above_the_datasheet_is_refused_before_any_challenge(
    start_agent: Any, pool_at: Any, acme: Any
) -> None:
    # The figure the review's cheat got recorded for an H800, declared for an H100 SXM (the
    # catalog has no citable BF16 figure for the H800, so no peak check applies to it).
    endpoint = start_agent(agent_config(model="nvidia-h100-sxm", declared_tflops=4295.0, nodes=1))
    pool = pool_at(
        acme,
        endpoint,
        accelerator=Accelerator.objects.get(slug="nvidia-h100-sxm"),
        nodes=1,
        declared_tflops_per_accelerator=4295.0,
    )
    run = run_directly(force_status(pool, Status.SUBMITTED))

    assert run.verdict_reason.startswith("impossible declaration"), run.verdict_reason
    assert run.devices == []  # refused before the agent was asked anything


@pytest.mark.django_db
@pytest.mark.parametrize("slug", [entry["slug"] for entry in CATALOG])
def test_an_honest_center_of_every_catalog_model_passes_at_the_demo_time_scale(
    slug: str, start_agent: Any, pool_at: Any, acme: Any
) -> None:
    accelerator = Accelerator.objects.get(slug=slug)
    precision = next(
        (p for p in ("bf16", "fp16", "fp32") if accelerator.peak_tflops(p) is not None), "bf16"
    )
    declared = accelerator.peak_tflops(precision) or 100.0
    endpoint = start_agent(agent_config(model=slug, declared_tflops=declared))
    pool = pool_at(
        acme,
        endpoint,
        accelerator=accelerator,
        declared_tflops_per_accelerator=declared,
        declared_precision=precision,
    )

    run = run_directly(force_status(pool, Status.SUBMITTED))

    assert run.state == RunState.PASSED, run.verdict_reason
    assert run.dtype == precision


@pytest.mark.django_db
def test_a_pool_measuring_clearly_below_its_record_is_degraded_for_drift(
    start_agent: Any, pool_at: Any, acme: Any
) -> None:
    fast = start_agent(agent_config(declared_tflops=200.0, speed_factor=1.5))  # runs at ~300
    pool = pool_at(acme, fast, declared_tflops_per_accelerator=200.0)
    first = run_directly(force_status(pool, Status.SUBMITTED))
    assert first.state == RunState.PASSED, first.verdict_reason
    pool.refresh_from_db()
    assert pool.status == Status.ACTIVE

    # The same pool later answers at its declaration (~200): still above the 80 % tolerance,
    # but a third below its own record.
    slower = start_agent(agent_config(declared_tflops=200.0))
    type(pool.center).objects.filter(pk=pool.center_id).update(agent_endpoint=slower)
    pool.refresh_from_db()
    second = run_directly(pool, Trigger.SCHEDULED)

    pool.refresh_from_db()
    assert second.state == RunState.PASSED
    assert second.drift is not None and second.drift < 0.85
    assert second.verdict_reason.startswith("drift"), second.verdict_reason
    assert pool.status == Status.DEGRADED
    assert pool.status_reason == second.verdict_reason

    # Back at its record: back to active.
    type(pool.center).objects.filter(pk=pool.center_id).update(agent_endpoint=fast)
    pool.refresh_from_db()
    third = run_directly(pool, Trigger.SCHEDULED)
    pool.refresh_from_db()
    assert third.state == RunState.PASSED and not third.verdict_reason.startswith("drift")
    assert pool.status == Status.ACTIVE


PRODUCTION_CASES = [
    (SimulationMode.HONEST, "verified"),
    (SimulationMode.CHEAT_TIMING, "opening"),
    (SimulationMode.CHEAT_RTT, "throughput"),
    (SimulationMode.CHEAT_SKIP, "arithmetic"),
    (SimulationMode.CHEAT_FAST, "impossible"),
    (SimulationMode.CHEAT_PRECISION, "arithmetic"),
    (SimulationMode.CHEAT_ONE_DEVICE, "throughput"),
    (SimulationMode.CHEAT_REPLAY, "arithmetic"),
    (SimulationMode.CHEAT_ONE_ENTRY, "arithmetic"),
    (SimulationMode.CHEAT_WRONG, "arithmetic"),
    (SimulationMode.CHEAT_PARTIAL, "arithmetic"),
    (SimulationMode.CHEAT_DEGENERATE, "arithmetic"),
    (SimulationMode.SLOW, "throughput"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("mode", "reason"), PRODUCTION_CASES)
def test_every_cheat_fails_at_production_time_scale(
    mode: SimulationMode, reason: str, start_agent: Any, pool_at: Any, acme: Any, settings: Any
) -> None:
    """VERIFICATION_TIME_SCALE=1.0 and simulated devices at 1.0: a small accelerator (4 GFLOPS
    per device, its catalog peak) that this CPU can emulate for real, two per node."""
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_TARGET_SECONDS = 1.0
    # One node of two: cheat-fast computes for real at 4.3x the declaration, and four devices
    # at once asked more of this 2-core machine than it gives while other work runs.
    settings.VERIFICATION_SAMPLE_NODES = 1
    tiny = Accelerator.objects.create(
        slug="test-tiny", vendor="Test", model="tiny", origin="imported", bf16_dense_tflops=0.004
    )
    config = agent_config(mode, model="test-tiny", declared_tflops=0.004, accelerators_per_node=2)
    production = replace(config, simulation=replace(config.simulation, time_scale=1.0))
    pool = pool_at(
        acme,
        start_agent(production),
        accelerator=tiny,
        accelerators_per_node=2,
        declared_tflops_per_accelerator=0.004,
    )

    run = run_directly(force_status(pool, Status.SUBMITTED))

    assert run.time_scale == 1.0
    assert run.verdict_reason.startswith(reason), run.verdict_reason
    assert run.state == (RunState.PASSED if mode is SimulationMode.HONEST else RunState.FAILED)


# --- provers that break the stream's rules ----------------------------------------------------


class _StreamCheat:
    """An honest chain whose commitments are sent in a way the protocol forbids."""

    def __init__(self, how: str) -> None:
        self.how = how

    def run_chain(self, sink: Any, pool: Any) -> Any:
        from agent.benchmark import DeviceReport
        from agent.challenge import chain

        products = list(
            chain(
                sink.seed,
                sink.challenge.n,
                sink.challenge.precision,
                sink.challenge.steps,
                challenge_id=sink.challenge.challenge_id,
                device=sink.device,
            )
        )
        order = list(range(1, len(products) + 1))
        if self.how == "reordered":  # the second step's commitment before the first
            order[0], order[1] = order[1], order[0]
        elif self.how == "truncated":  # the last step never committed
            order = order[:-1]
        for step in order:
            sink.commit(step, products[step - 1])
        if self.how == "foreign-device":  # a commitment for a device nobody challenged
            sink.commit_digest(9999, b"\0" * 32)
        return DeviceReport(sink.device, "stream cheat")


@pytest.mark.django_db
@pytest.mark.parametrize("how", ["reordered", "truncated", "foreign-device"])
def test_a_stream_that_breaks_the_order_of_commitments_fails(
    how: str, pool_at: Any, acme: Any
) -> None:
    from agent.server import build_server

    runtime = build_server("127.0.0.1:0", agent_config=agent_config(), backend=_StreamCheat(how))
    try:
        pool = pool_at(acme, f"127.0.0.1:{runtime.port}")
        run = run_directly(force_status(pool, Status.SUBMITTED))
    finally:
        runtime.stop(grace=0).wait()

    assert run.state == RunState.FAILED
    assert run.verdict_reason.startswith("commitments"), run.verdict_reason


# --- composite steps: several products behind each commitment --------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (SimulationMode.HONEST, "verified"),
        # Repeated squaring of B: the links' signs make the factors differ (protocol v2).
        (SimulationMode.CHEAT_SHORTCUT, "arithmetic"),
        # Rank n / 4 approximation of each step: refused while the links are few (<= 8).
        (SimulationMode.CHEAT_LOWRANK, "arithmetic"),
        # The step's linear map built once and reused: each step has its own signs (v3).
        (SimulationMode.CHEAT_FACTORED, "arithmetic"),
    ],
)
def test_a_step_of_several_links_cannot_be_shortcut(
    mode: SimulationMode, reason: str, start_agent: Any, pool_at: Any, acme: Any, settings: Any
) -> None:
    """With composite steps on (``VERIFICATION_MAX_INNER`` = 8; off by default), a fast device
    gets 8 products behind each commitment (forced here by a long minimum step): the cheaters
    that compute a step with less work fail."""
    settings.VERIFICATION_MAX_INNER = 8  # composite steps are off by default; at most 8
    settings.VERIFICATION_MIN_STEP_SECONDS = 1e6
    settings.VERIFICATION_OPEN_STEPS = 0  # every step: the verdict does not hang on the draw
    pool = pool_at(acme, start_agent(agent_config(mode)))

    run = run_directly(force_status(pool, Status.SUBMITTED))

    assert run.sample["inner"] == settings.VERIFICATION_MAX_INNER == 8
    assert run.verdict_reason.startswith(reason), run.verdict_reason
    assert run.state == (RunState.PASSED if mode is SimulationMode.HONEST else RunState.FAILED)
