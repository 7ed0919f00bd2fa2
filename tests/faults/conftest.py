"""Fault tests run against PRIVATE servers started by the harness (tests/harness/)."""

from tests.harness.fixtures import (  # noqa: F401 (fixtures and a hook, registered by import)
    figure,
    log_dir,
    make_platform,
    make_redis,
    private_pg,
    procs,
    pytest_runtest_makereport,
)
