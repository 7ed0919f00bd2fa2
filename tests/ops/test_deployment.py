"""The production-shaped deployment: compose file, probes, metrics, structured logs."""

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from interconnect.logging import JsonFormatter
from registry.context import request_id_var

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_the_compose_file_validates(tmp_path: Path) -> None:
    for name in ("docker-compose.yml", "Dockerfile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    result = subprocess.run(
        ["docker-compose", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    services = result.stdout
    for service in ("postgres", "redis", "web", "worker", "beat", "broker", "telemetry"):
        assert f"\n  {service}:" in services
    assert services.count("agent-") >= 3
    assert services.count("healthcheck:") >= 4


@pytest.mark.django_db
def test_liveness_readiness_and_metrics(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}
    client.get("/api/v1/hubs/")
    body = client.get("/metrics").content.decode()
    assert "interconnect_http_request_duration_seconds_bucket" in body
    assert 'route="api/v1/hubs/$",status="2xx"' in body


@pytest.mark.django_db
def test_every_response_carries_a_request_id(client: Any) -> None:
    mine = client.get("/api/v1/hubs/", HTTP_X_REQUEST_ID="trace-abc-123")
    assert mine["X-Request-ID"] == "trace-abc-123"
    hostile = client.get("/api/v1/hubs/", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert hostile["X-Request-ID"] != "bad id\nwith newline"
    assert len(hostile["X-Request-ID"]) == 32


def test_json_logs_carry_the_request_id() -> None:
    record = logging.makeLogRecord(
        {"name": "brokers", "levelname": "INFO", "msg": "booked %s", "args": ("B-1",)}
        | {"pool": "CN-1"}
    )
    token = request_id_var.set("req-77")
    try:
        line = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert line["message"] == "booked B-1"
    assert line["request_id"] == "req-77"
    assert line["pool"] == "CN-1"
