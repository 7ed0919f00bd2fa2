"""How the verifier sizes a challenge (``plan_challenge``): from the declaration, within what
the agent may keep, on nodes it cannot predict. No database: unsaved model instances."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from registry.models import Accelerator, Pool
from verification.services import plan_challenge, sample_bound


def pool(declared: float, *, per_node: int = 8, nodes: int = 16, precision: str = "bf16") -> Pool:
    return Pool(
        accelerator=Accelerator(slug="x", bf16_dense_tflops=declared),
        accelerators_per_node=per_node,
        nodes=nodes,
        declared_tflops_per_accelerator=declared,
        declared_precision=precision,
    )


@pytest.mark.parametrize("declared", [0.05, 10.0, 312.0, 989.0])
def test_a_production_chain_fits_what_the_agent_may_keep(declared: float, settings: Any) -> None:
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_SAMPLE_NODES = 0
    plan = plan_challenge(pool(declared))
    assert len(plan.devices) == 16 * 8  # every node, at once (the default)
    kept = len(plan.devices) * plan.steps * plan.n**2 * 4
    assert kept <= settings.VERIFICATION_MAX_CHALLENGE_BYTES
    assert 2 <= plan.steps <= settings.VERIFICATION_MAX_STEPS
    assert 64 <= plan.n <= settings.VERIFICATION_MAX_MATRIX_SIZE


def test_a_slow_device_gets_smaller_products_not_a_shorter_target(settings: Any) -> None:
    settings.VERIFICATION_TIME_SCALE = 1e-7
    plan = plan_challenge(pool(312.0))
    seconds = plan.steps * 2 * plan.n**3 / (312e12 * 1e-7)
    assert plan.n <= settings.VERIFICATION_MATRIX_SIZE
    assert settings.VERIFICATION_MIN_STEPS <= plan.steps <= settings.VERIFICATION_MAX_STEPS
    assert (
        0.5 * settings.VERIFICATION_TARGET_SECONDS
        <= seconds
        <= 2.5 * (settings.VERIFICATION_TARGET_SECONDS)
    )


def test_nodes_are_sampled_and_every_accelerator_of_them_is_challenged(settings: Any) -> None:
    settings.VERIFICATION_SAMPLE_NODES = 2
    seen = set()
    for _ in range(40):
        plan = plan_challenge(pool(312.0))
        assert len(plan.nodes) == 2
        assert sorted(plan.devices) == [n * 8 + s for n in plan.nodes for s in range(8)]
        assert len(set(plan.devices.values())) == 16  # a seed of its own per device
        seen.update(plan.nodes)
    assert len(seen) > 8  # the agent cannot know which nodes come next


def test_every_node_is_challenged_by_default_within_what_the_agent_may_keep(
    settings: Any,
) -> None:
    """A sample proves only the hardware of as many nodes (the agent picks which hardware answers
    for the nodes drawn), so by default every accelerator of the pool is challenged at once.
    One agent fronts the pool and keeps every device's products (the stock agent refuses more
    than 4 GiB, review 2), so a large pool gets shorter or smaller chains, never more memory."""
    shipped = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s; print(s.VERIFICATION_SAMPLE_NODES)",
        ],
        env={k: v for k, v in os.environ.items() if k != "VERIFICATION_SAMPLE_NODES"}
        | {"DJANGO_SETTINGS_MODULE": "interconnect.settings"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert shipped.stdout.strip() == "0"  # the tests' own settings sample one node
    settings.VERIFICATION_SAMPLE_NODES = 0
    settings.VERIFICATION_TIME_SCALE = 1.0
    for nodes in (1, 5, 64, 100):
        plan = plan_challenge(pool(312.0, nodes=nodes))
        assert sorted(plan.devices) == list(range(nodes * 8))
        assert plan.nodes == list(range(nodes))
        kept = len(plan.devices) * plan.steps * plan.n**2 * 4
        assert kept <= settings.VERIFICATION_MAX_CHALLENGE_BYTES <= 4 * 2**30, nodes


def test_the_sample_bound() -> None:
    assert sample_bound(16, 16, 0.1) == 0.0
    assert sample_bound(16, 2, 0.0) == 1.0
    # 2 of 10 bad nodes, 3 sampled: C(8,3)/C(10,3) = 56/120
    assert sample_bound(10, 3, 0.2) == pytest.approx(56 / 120)


def test_composite_steps_are_off_by_default(settings: Any) -> None:
    settings.VERIFICATION_TIME_SCALE = 1.0
    assert plan_challenge(pool(989.0, nodes=1)).inner == 1


def test_a_fast_device_gets_several_products_behind_each_commitment(settings: Any) -> None:
    settings.VERIFICATION_MAX_INNER = 8  # what an experiment may set
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_MATRIX_SIZE = 1024
    settings.VERIFICATION_MAX_CHALLENGE_BYTES = 64 * 2**30
    plan = plan_challenge(pool(989.0, nodes=1))
    per_commitment = plan.inner * 2 * plan.n**3 / 989e12
    assert plan.inner > 1
    assert per_commitment >= settings.VERIFICATION_MIN_STEP_SECONDS or (
        plan.inner == settings.VERIFICATION_MAX_INNER
    )
    # A CPU-sized device keeps one product per commitment.
    settings.VERIFICATION_TIME_SCALE = 1e-7
    assert plan_challenge(pool(312.0)).inner == 1


def test_a_fast_pool_fills_the_memory_with_large_products_not_many_steps(settings: Any) -> None:
    """In the same memory, larger products hold more work (steps x n^2 bytes, steps x n^3
    flops): the chain is shortened to VERIFICATION_MIN_STEPS before n is halved. Before, a
    BF16 pool at 989 TFLOPS (2 nodes of 8, 1 GiB) got n = 256 and 128 steps, 4.3 GFLOP a
    device; now n = 2048 and the steps that fit (4 with 16 devices), 69 GFLOP."""
    settings.VERIFICATION_TIME_SCALE = 1.0
    settings.VERIFICATION_SAMPLE_NODES = 2
    plan = plan_challenge(pool(989.0))
    assert (
        len(plan.devices) * plan.steps * plan.n**2 * 4 <= settings.VERIFICATION_MAX_CHALLENGE_BYTES
    )
    one = len(plan.devices) * plan.n**2 * 4  # a step of every device
    assert plan.n == 2048 and plan.steps == settings.VERIFICATION_MAX_CHALLENGE_BYTES // one
    assert plan.steps * plan.n**3 >= 16 * 128 * 256**3
