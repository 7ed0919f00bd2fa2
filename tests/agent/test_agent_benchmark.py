"""Benchmark challenges at the agent: commitments streamed per step, products opened afterwards,
each simulation mode departing from honesty in exactly its one way."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import grpc
import numpy as np
import pytest
from agent_testing import H100_POOL, StartAgent, simulated_config

from agent.backends import NumpyBackend, measure
from agent.challenge import assemble, chain, digest, inputs, next_input, row_blocks
from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
from agent.simulation import step_seconds
from protos import agent_pb2, agent_pb2_grpc

N = 96
STEPS = 3


@dataclass
class Answer:
    """Commitments in arrival order, their arrival times, and the opened products."""

    commitments: list[tuple[int, int, bytes]]
    arrivals: dict[tuple[int, int], float]
    reports: dict[int, agent_pb2.DeviceReport]
    products: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)


def challenge(
    stub: agent_pb2_grpc.AgentStub,
    *,
    seeds: dict[int, int] | None = None,
    n: int = N,
    steps: int = STEPS,
    dtype: int = agent_pb2.DTYPE_FLOAT32,
    challenge_id: str = "c-1",
    open_all: bool = True,
) -> Answer:
    seeds = seeds or {0: 7}
    request = agent_pb2.RunBenchmarkRequest(
        n=n,
        dtype=dtype,
        steps=steps,
        challenge_id=challenge_id,
        devices=[agent_pb2.DeviceChallenge(device=d, seed=s) for d, s in seeds.items()],
    )
    started = time.perf_counter()
    answer = Answer([], {}, {})
    for message in stub.RunBenchmark(request, timeout=30):
        if message.WhichOneof("payload") == "commitment":
            c = message.commitment
            answer.commitments.append((c.device, c.step, c.digest))
            answer.arrivals[(c.device, c.step)] = time.perf_counter() - started
        else:
            answer.reports[message.report.device] = message.report
    if open_all:
        openings = [agent_pb2.StepOpening(device=d, step=s) for d, s, _ in answer.commitments]
        blocks: dict[tuple[int, int], list[tuple[int, int, bytes]]] = {}
        opened = stub.OpenBenchmark(
            agent_pb2.OpenBenchmarkRequest(challenge_id=challenge_id, openings=openings),
            timeout=30,
        )
        for m in opened:
            assert m.ByteSize() < 1024 * 1024
            blocks.setdefault((m.device, m.step), []).append((m.row_offset, m.rows, m.data))
        name = {agent_pb2.DTYPE_FLOAT32: "fp32", agent_pb2.DTYPE_BFLOAT16: "bf16"}.get(
            dtype, "fp64"
        )
        answer.products = {key: assemble(parts, n, name) for key, parts in blocks.items()}
    return answer


def reference(
    seed: int,
    name: str = "fp32",
    n: int = N,
    steps: int = STEPS,
    *,
    device: int = 0,
    challenge_id: str = "c-1",
) -> list[np.ndarray]:
    return list(chain(seed, n, name, steps, challenge_id=challenge_id, device=device))


def test_an_honest_center_commits_every_step_in_order_and_opens_what_it_committed(
    honest_stub: agent_pb2_grpc.AgentStub,
) -> None:
    answer = challenge(honest_stub, seeds={0: 7, 3: 8})

    for device in (0, 3):
        steps = [s for d, s, _ in answer.commitments if d == device]
        assert steps == [1, 2, 3]
    for (device, step), product in answer.products.items():
        seed = {0: 7, 3: 8}[device]
        np.testing.assert_array_equal(product, reference(seed, device=device)[step - 1])
        committed = {(d, s): h for d, s, h in answer.commitments}[(device, step)]
        assert committed == digest(product, "fp32", challenge_id="c-1", device=device, step=step)
    assert "nvidia-h100-sxm #3" in answer.reports[3].description


def test_bf16_products_come_back_in_fp32_before_any_rounding(
    honest_stub: agent_pb2_grpc.AgentStub,
) -> None:
    answer = challenge(honest_stub, dtype=agent_pb2.DTYPE_BFLOAT16)
    product = answer.products[(0, 1)]
    a, b = inputs(7, N, "bf16")
    assert product.dtype == np.float32
    np.testing.assert_array_equal(product, a.astype(np.float32) @ b.astype(np.float32))
    # Not representable in BF16: the agent did not round the product.
    assert not np.array_equal(product, product.astype(a.dtype).astype(np.float32))


def test_each_step_depends_on_the_whole_previous_product() -> None:
    c1 = reference(1)[0]
    b = inputs(1, N, "fp32")[1]
    h = digest(c1, "fp32", challenge_id="c-1", device=0, step=1)
    x = next_input(c1, "fp32", b, h)
    assert x.shape == (N, N) and x.dtype == np.float32
    changed = c1.copy()
    changed[5, 9] += 1.0  # one entry of step 1 ...
    moved = (next_input(changed, "fp32", b, h) @ b) != (x @ b)
    assert moved[9].all()  # ... changes a whole row of step 2 (the transpose mixes)
    # ... and its commitment changes every entry of step 2 (the term's signs come from it).
    h2 = digest(changed, "fp32", challenge_id="c-1", device=0, step=1)
    assert (
        next_input(changed, "fp32", b, h2) @ b != next_input(changed, "fp32", b, h) @ b
    ).mean() > 0.9


def test_large_products_open_in_chunks_under_one_mebibyte(
    honest_stub: agent_pb2_grpc.AgentStub,
) -> None:
    answer = challenge(honest_stub, n=640, steps=1)  # 1.6 MiB of FP32
    np.testing.assert_array_equal(answer.products[(0, 1)], reference(7, n=640, steps=1)[0])


@pytest.mark.parametrize(
    ("field_", "request_"),
    [
        ("dtype", agent_pb2.RunBenchmarkRequest(n=8, steps=1, challenge_id="x")),
        ("n", agent_pb2.RunBenchmarkRequest(n=0, steps=1, dtype=1, challenge_id="x")),
        ("n", agent_pb2.RunBenchmarkRequest(n=10**6, steps=1, dtype=1, challenge_id="x")),
        ("steps", agent_pb2.RunBenchmarkRequest(n=8, dtype=1, challenge_id="x")),
        ("challenge_id", agent_pb2.RunBenchmarkRequest(n=8, steps=1, dtype=1)),
        ("devices", agent_pb2.RunBenchmarkRequest(n=8, steps=1, dtype=1, challenge_id="x")),
        (
            "devices",
            agent_pb2.RunBenchmarkRequest(
                n=8,
                steps=1,
                dtype=1,
                challenge_id="x",
                devices=[agent_pb2.DeviceChallenge(device=999, seed=1)],
            ),
        ),
        (
            "devices",
            agent_pb2.RunBenchmarkRequest(
                n=8,
                steps=1,
                dtype=1,
                challenge_id="x",
                devices=[agent_pb2.DeviceChallenge(device=1), agent_pb2.DeviceChallenge(device=1)],
            ),
        ),
    ],
)
def test_a_malformed_challenge_is_an_invalid_argument(
    honest_stub: agent_pb2_grpc.AgentStub, field_: str, request_: agent_pb2.RunBenchmarkRequest
) -> None:
    if field_ not in ("devices", "challenge_id") and not request_.devices:
        request_.devices.append(agent_pb2.DeviceChallenge(device=0, seed=1))
    if field_ == "challenge_id":
        request_.devices.append(agent_pb2.DeviceChallenge(device=0, seed=1))
    with pytest.raises(grpc.RpcError) as raised:
        list(honest_stub.RunBenchmark(request_, timeout=5))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_ in raised.value.details()


def test_a_challenge_too_large_to_keep_is_refused(start_agent: StartAgent) -> None:
    config = simulated_config()
    _, channel = start_agent(AgentConfig(**{**config.__dict__, "max_challenge_bytes": 1024 * 1024}))
    with pytest.raises(grpc.RpcError) as raised:
        challenge(agent_pb2_grpc.AgentStub(channel), n=256, steps=8)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_opening_an_unknown_challenge_is_not_found(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    request = agent_pb2.OpenBenchmarkRequest(
        challenge_id="never", openings=[agent_pb2.StepOpening(device=0, step=1)]
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(honest_stub.OpenBenchmark(request, timeout=5))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_challenge_id_cannot_be_answered_twice(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    challenge(honest_stub, challenge_id="once", open_all=False)
    with pytest.raises(grpc.RpcError) as raised:
        challenge(honest_stub, challenge_id="once", open_all=False)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_an_unknown_pool_is_not_found(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    request = agent_pb2.RunBenchmarkRequest(
        n=8,
        steps=1,
        dtype=1,
        pool_key="nope",
        challenge_id="x",
        devices=[agent_pb2.DeviceChallenge(device=0, seed=1)],
    )
    with pytest.raises(grpc.RpcError) as raised:
        list(honest_stub.RunBenchmark(request, timeout=5))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_cheat_timing_center_commits_before_computing(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config(SimulationMode.CHEAT_TIMING))
    answer = challenge(agent_pb2_grpc.AgentStub(channel), n=256, steps=4)
    # All commitments at once, none of them the hash of what it later opens.
    for device, step, committed in answer.commitments:
        product = answer.products[(device, step)]
        np.testing.assert_array_equal(product, reference(7, n=256, steps=4)[step - 1])
        assert committed != digest(product, "fp32", challenge_id="c-1", device=device, step=step)


@pytest.mark.parametrize(
    "mode",
    [
        SimulationMode.CHEAT_WRONG,
        SimulationMode.CHEAT_PARTIAL,
        SimulationMode.CHEAT_SKIP,
        SimulationMode.CHEAT_PRECISION,
        SimulationMode.CHEAT_ONE_ENTRY,
        SimulationMode.CHEAT_DEGENERATE,
    ],
)
def test_an_arithmetic_cheat_commits_products_that_are_not_the_chain(
    mode: SimulationMode, start_agent: StartAgent
) -> None:
    _, channel = start_agent(simulated_config(mode))
    answer = challenge(agent_pb2_grpc.AgentStub(channel), steps=4)
    truth = reference(7, steps=4)
    wrong = [s for (d, s), p in answer.products.items() if not np.allclose(p, truth[s - 1])]
    assert wrong, f"{mode} returned the honest chain"
    if mode is SimulationMode.CHEAT_ONE_ENTRY:
        diff = answer.products[(0, 4)] - truth[3]
        assert np.count_nonzero(diff) == 1 and diff.max() == pytest.approx(1.0)


def test_a_cheat_replay_center_answers_with_its_first_chain(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config(SimulationMode.CHEAT_REPLAY))
    stub = agent_pb2_grpc.AgentStub(channel)
    challenge(stub, seeds={0: 7}, challenge_id="first")
    second = challenge(stub, seeds={0: 8, 1: 9}, challenge_id="second")
    for device in (0, 1):
        np.testing.assert_array_equal(second.products[(device, 1)], reference(7)[0])


def test_a_cheat_one_device_center_takes_turns_on_one_accelerator(
    start_agent: StartAgent,
) -> None:
    simulation = SimulationConfig(mode=SimulationMode.CHEAT_ONE_DEVICE, time_scale=1e-6)
    one = challenge(
        agent_pb2_grpc.AgentStub(
            start_agent(simulated_config(SimulationMode.CHEAT_ONE_DEVICE, simulation=simulation))[1]
        ),
        seeds={0: 1, 1: 2, 2: 3, 3: 4},
        n=256,  # ~34 ms a step at 1e-6: well above scheduling noise
        steps=8,
        open_all=False,
    )
    honest = challenge(
        agent_pb2_grpc.AgentStub(
            start_agent(
                simulated_config(
                    SimulationMode.HONEST, simulation=SimulationConfig(time_scale=1e-6)
                )
            )[1]
        ),
        seeds={0: 1, 1: 2, 2: 3, 3: 4},
        n=256,  # ~34 ms a step at 1e-6: well above scheduling noise
        steps=8,
        open_all=False,
    )
    # One accelerator takes turns: its 4 x 8 steps cannot end before 32 emulated step times
    # (a load on the machine only delays them), while each honest device needs 8 of its own.
    per_step = step_seconds(256, H100_POOL.declared_tflops_per_accelerator, 1e-6, 1.0)
    assert max(one.arrivals.values()) >= 0.95 * 4 * 8 * per_step
    assert max(honest.arrivals.values()) >= 0.95 * 8 * per_step


def test_speed_factors_of_the_modes() -> None:
    assert SimulationConfig(mode=SimulationMode.SLOW).effective_speed_factor == 0.5
    assert SimulationConfig(mode=SimulationMode.CHEAT_FAST).effective_speed_factor == 4.3
    assert (
        SimulationConfig(mode=SimulationMode.SLOW, speed_factor=0.8).effective_speed_factor == 0.8
    )
    assert SimulationConfig().effective_speed_factor == 1.0


def test_a_flaky_center_fails_its_first_calls_then_answers(start_agent: StartAgent) -> None:
    """Flaky is an agent restarting: GetInventory, called before the challenge is sent, fails;
    the challenge itself never does (its failure would fail the run)."""
    simulation = SimulationConfig(mode=SimulationMode.FLAKY, time_scale=1e-5, flaky_failures=2)
    _, channel = start_agent(simulated_config(SimulationMode.FLAKY, simulation=simulation))
    stub = agent_pb2_grpc.AgentStub(channel)

    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE

    assert stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=5).pools
    answer = challenge(stub, challenge_id="ok")
    np.testing.assert_array_equal(answer.products[(0, 1)], reference(7)[0])


def test_challenge_inputs_are_a_pure_function_of_the_seed() -> None:
    a1, b1 = inputs(99, 16, "fp32")
    half = np.sqrt(3.0)
    for which, matrix in ((0, a1), (1, b1)):  # A and B each from their own stream
        drawn = np.random.default_rng([99, which]).random((16, 16)) * (2 * half) - half
        np.testing.assert_array_equal(matrix, drawn.astype(np.float32))
    assert not np.array_equal(a1, b1)
    a16, _ = inputs(99, 16, "bf16")
    # BF16 inputs are the same values rounded: zero mean, not small integers.
    assert np.abs(a16.astype(np.float32) - a1).max() < 0.02
    assert not np.array_equal(a16.astype(np.float32), np.round(a16.astype(np.float32)))


def test_assemble_refuses_missing_or_overlapping_rows() -> None:
    product = np.arange(16.0, dtype=np.float32).reshape(4, 4)
    blocks = list(row_blocks(product, "fp32", max_chunk_bytes=32))  # two rows per block
    np.testing.assert_array_equal(assemble(reversed(blocks), 4, "fp32"), product)
    with pytest.raises(ValueError, match="missing"):
        assemble(blocks[:1], 4, "fp32")
    with pytest.raises(ValueError, match="overlaps"):
        assemble([blocks[0], blocks[0]], 4, "fp32")


def test_a_real_agent_computes_the_chain_on_the_host(start_agent: StartAgent) -> None:
    pool = PoolConfig(key="cpu", accelerator_model="x86-cpu")
    _, channel = start_agent(AgentConfig(agent_id="real", port=0, pools=(pool,)))
    answer = challenge(agent_pb2_grpc.AgentStub(channel))
    for step in range(1, STEPS + 1):
        np.testing.assert_array_equal(answer.products[(0, step)], reference(7)[step - 1])
    assert answer.reports[0].description.startswith("numpy on CPU")


def test_measure_reports_a_positive_throughput() -> None:
    assert measure(NumpyBackend(), "fp32", n=128, steps=2) > 0
