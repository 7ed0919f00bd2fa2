"""A pytest plugin that runs each selected test N times (a race's rate, before and after a fix).

    .venv/bin/pytest -p tests.harness.repeat --repeat 100 tests/brokers/test_grpc.py::test_x

Each run is a parametrization of its own (``test_x[0]`` ... ``test_x[99]``), with fresh
function-scoped fixtures; ``-x`` stops at the first failure.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--repeat", type=int, default=1, help="run each test this many times")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    times = int(metafunc.config.getoption("repeat"))
    if times > 1:
        metafunc.fixturenames.append("_repeat_index")
        metafunc.parametrize("_repeat_index", range(times))


@pytest.fixture
def _repeat_index(request: pytest.FixtureRequest) -> Any:
    return request.param
