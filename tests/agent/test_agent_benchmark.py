"""Benchmark challenges: what each simulated center returns, checked as the verifier would."""

from __future__ import annotations

import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from agent_testing import StartAgent, simulated_config

from agent.challenge import assemble, matrices, multiply, row_blocks
from agent.config import AgentConfig, PoolConfig, SimulationConfig, SimulationMode
from protos import agent_pb2, agent_pb2_grpc

N = 160


@dataclass
class Answer:
    """A reassembled benchmark answer and the caller's time to its first message."""

    summary: agent_pb2.BenchmarkSummary
    product: np.ndarray
    chunk_sizes: list[int]
    seconds_to_first_message: float


def run_benchmark(
    stub: agent_pb2_grpc.AgentStub,
    *,
    seed: int = 7,
    n: int = N,
    dtype: int = agent_pb2.DTYPE_FLOAT64,
    repetitions: int = 1,
) -> Answer:
    request = agent_pb2.RunBenchmarkRequest(
        seed=seed, n=n, dtype=dtype, repetitions=repetitions, challenge_id="c-1"
    )
    started = time.perf_counter()
    stream = stub.RunBenchmark(request, timeout=30)
    first = next(stream)
    seconds_to_first_message = time.perf_counter() - started
    assert first.WhichOneof("payload") == "summary"
    chunks = [message.chunk for message in stream]
    assert all(message.ByteSize() < 1024 * 1024 for message in chunks)
    assert len(chunks) == first.summary.chunk_count
    name = "float32" if dtype == agent_pb2.DTYPE_FLOAT32 else "float64"
    product = assemble(((c.row_offset, c.rows, c.data) for c in chunks), n, name)
    return Answer(first.summary, product, [c.ByteSize() for c in chunks], seconds_to_first_message)


def test_an_honest_center_returns_the_exact_product(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    answer = run_benchmark(honest_stub, seed=2024, repetitions=3)
    a, b = matrices(2024, N, "float64")
    np.testing.assert_array_equal(answer.product, a @ b)
    assert answer.summary.challenge_id == "c-1"
    assert answer.summary.pool_key == "nvidia-h100-sxm"
    assert (answer.summary.n, answer.summary.repetitions) == (N, 3)
    assert "nvidia-h100-sxm" in answer.summary.device
    # Honest: it claims no less time than the caller saw it take before answering.
    assert 0 < answer.summary.compute_seconds <= answer.seconds_to_first_message


def test_float32_products_come_back_in_float32(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    answer = run_benchmark(honest_stub, dtype=agent_pb2.DTYPE_FLOAT32)
    a, b = matrices(7, N, "float32")
    assert answer.product.dtype == np.float32
    np.testing.assert_array_equal(answer.product, a @ b)


def test_large_products_are_split_into_chunks_under_one_mebibyte(
    honest_stub: agent_pb2_grpc.AgentStub,
) -> None:
    answer = run_benchmark(honest_stub, n=512)  # 2 MiB of float64
    assert len(answer.chunk_sizes) >= 3
    a, b = matrices(7, 512, "float64")
    np.testing.assert_allclose(answer.product, a @ b)


@pytest.mark.parametrize(
    ("field", "request_"),
    [
        ("dtype", agent_pb2.RunBenchmarkRequest(n=8, repetitions=1)),
        ("n", agent_pb2.RunBenchmarkRequest(n=0, repetitions=1, dtype=agent_pb2.DTYPE_FLOAT64)),
        ("n", agent_pb2.RunBenchmarkRequest(n=10**6, repetitions=1, dtype=1)),
        ("repetitions", agent_pb2.RunBenchmarkRequest(n=8, dtype=agent_pb2.DTYPE_FLOAT64)),
    ],
)
def test_a_malformed_challenge_is_an_invalid_argument(
    honest_stub: agent_pb2_grpc.AgentStub, field: str, request_: agent_pb2.RunBenchmarkRequest
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        list(honest_stub.RunBenchmark(request_, timeout=5))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in raised.value.details()


def test_an_unknown_pool_is_not_found(honest_stub: agent_pb2_grpc.AgentStub) -> None:
    request = agent_pb2.RunBenchmarkRequest(n=8, repetitions=1, dtype=1, pool_key="nope")
    with pytest.raises(grpc.RpcError) as raised:
        list(honest_stub.RunBenchmark(request, timeout=5))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_cheat_wrong_center_returns_an_unrelated_matrix(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config(SimulationMode.CHEAT_WRONG))
    answer = run_benchmark(agent_pb2_grpc.AgentStub(channel))
    a, b = matrices(7, N, "float64")
    assert answer.product.shape == (N, N)
    mismatched = ~np.isclose(answer.product, a @ b)
    assert mismatched.mean() > 0.9


def test_a_cheat_partial_center_alters_about_one_percent_of_the_rows(
    start_agent: StartAgent,
) -> None:
    _, channel = start_agent(simulated_config(SimulationMode.CHEAT_PARTIAL))
    answer = run_benchmark(agent_pb2_grpc.AgentStub(channel), n=300)
    a, b = matrices(7, 300, "float64")
    wrong_rows = np.flatnonzero(~np.isclose(answer.product, a @ b).all(axis=1))
    assert len(wrong_rows) == 3  # 1 % of 300
    correct = np.setdiff1d(np.arange(300), wrong_rows)
    np.testing.assert_array_equal(answer.product[correct], (a @ b)[correct])


def test_a_cheat_timing_center_claims_less_time_than_it_took(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config(SimulationMode.CHEAT_TIMING))
    answer = run_benchmark(agent_pb2_grpc.AgentStub(channel), n=256, repetitions=2)
    a, b = matrices(7, 256, "float64")
    np.testing.assert_array_equal(answer.product, multiply(a, b, 2))
    assert answer.summary.compute_seconds < answer.seconds_to_first_message


def test_a_slow_center_emulates_half_its_declared_speed() -> None:
    slow = SimulationConfig(mode=SimulationMode.SLOW)
    assert slow.effective_speed_factor == 0.5
    assert (
        SimulationConfig(mode=SimulationMode.SLOW, speed_factor=0.8).effective_speed_factor == 0.8
    )
    assert SimulationConfig().effective_speed_factor == 1.0


def test_a_slow_center_still_returns_the_right_product(start_agent: StartAgent) -> None:
    _, channel = start_agent(simulated_config(SimulationMode.SLOW))
    answer = run_benchmark(agent_pb2_grpc.AgentStub(channel))
    a, b = matrices(7, N, "float64")
    np.testing.assert_array_equal(answer.product, a @ b)
    assert answer.summary.compute_seconds <= answer.seconds_to_first_message


def test_a_flaky_center_fails_its_first_calls_then_answers(start_agent: StartAgent) -> None:
    simulation = SimulationConfig(mode=SimulationMode.FLAKY, time_scale=1e-5, flaky_failures=2)
    _, channel = start_agent(simulated_config(SimulationMode.FLAKY, simulation=simulation))
    stub = agent_pb2_grpc.AgentStub(channel)

    for _ in range(2):
        with pytest.raises(grpc.RpcError) as raised:
            stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=5)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as raised:
            run_benchmark(stub)
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE

    assert stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=5).pools
    answer = run_benchmark(stub)
    a, b = matrices(7, N, "float64")
    np.testing.assert_array_equal(answer.product, a @ b)


def test_challenge_matrices_are_a_pure_function_of_the_seed() -> None:
    a1, b1 = matrices(99, 16, "float32")
    a2, b2 = matrices(99, 16, "float32")
    rng = np.random.default_rng(99)
    expected_a = rng.standard_normal((16, 16)).astype(np.float32)
    expected_b = rng.standard_normal((16, 16)).astype(np.float32)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(a1, expected_a)
    np.testing.assert_array_equal(b1, expected_b)


def test_assemble_refuses_missing_or_overlapping_rows() -> None:
    product = np.arange(16.0).reshape(4, 4)
    blocks = list(row_blocks(product, max_chunk_bytes=64))  # two rows per block
    np.testing.assert_array_equal(assemble(reversed(blocks), 4, "float64"), product)
    with pytest.raises(ValueError, match="missing"):
        assemble(blocks[:1], 4, "float64")
    with pytest.raises(ValueError, match="overlaps"):
        assemble([blocks[0], blocks[0]], 4, "float64")


def test_a_real_agent_computes_on_the_host_and_reports_measured_time(
    start_agent: StartAgent,
) -> None:
    pool = PoolConfig(key="cpu", accelerator_model="x86-cpu")
    _, channel = start_agent(AgentConfig(agent_id="real", port=0, pools=(pool,)))
    answer = run_benchmark(agent_pb2_grpc.AgentStub(channel), repetitions=2)
    a, b = matrices(7, N, "float64")
    np.testing.assert_array_equal(answer.product, a @ b)
    assert answer.summary.device.startswith("numpy on CPU")
    assert 0 < answer.summary.compute_seconds <= answer.seconds_to_first_message
