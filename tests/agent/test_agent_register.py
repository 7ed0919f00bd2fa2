"""`python -m agent register` against a stand-in for the platform's REST API.

The platform is outside the agent, so a small local HTTP server plays it: it records each call
and answers like the registry API (national ids on success, DRF field errors on HTTP 400).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from agent_testing import StartAgent, simulated_config

from agent.__main__ import main

Call = tuple[str, str, dict[str, Any], str]


class FakePlatform(ThreadingHTTPServer):
    """Records calls; answers POST /centers/ and /pools/ with national ids."""

    calls: list[Call]
    refuse_pools: bool


class Handler(BaseHTTPRequestHandler):
    server: FakePlatform

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        self.server.calls.append(("POST", self.path, body, self.headers.get("Authorization", "")))
        if self.path == "/api/v1/centers/":
            self._answer(201, {"national_id": "CN-ZJK-0042", **body})
        elif self.path == "/api/v1/pools/" and self.server.refuse_pools:
            self._answer(400, {"accelerator": ["Unknown accelerator model."], "nodes": ["Bad."]})
        elif self.path == "/api/v1/pools/":
            self._answer(201, {"national_id": "CN-ZJK-0042-P1", **body})
        elif self.path.endswith("/submit/"):
            self._answer(200, {"status": "submitted"})
        else:
            self._answer(404, {"detail": "Not found."})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    server = FakePlatform(("127.0.0.1", 0), Handler)
    server.calls = []
    server.refuse_pools = False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def register_argv(platform: FakePlatform, endpoint: str) -> list[str]:
    return [
        "register",
        "--platform-url",
        f"http://127.0.0.1:{platform.server_address[1]}",
        "--token",
        "tok-123",
        "--agent-endpoint",
        endpoint,
        "--center-name",
        "Zhangjiakou DC 1",
        "--cluster",
        "ZJK",
        "--latitude",
        "40.77",
        "--longitude",
        "114.88",
        "--pue",
        "1.2",
        "--green-power-share",
        "0.6",
        "--price",
        "18.5",
        "--trait",
        "liquid-cooled",
    ]


def test_register_creates_the_center_then_each_pool_and_submits_it(
    platform: FakePlatform, start_agent: StartAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime, _ = start_agent(simulated_config())
    endpoint = f"127.0.0.1:{runtime.port}"

    assert main(register_argv(platform, endpoint)) == 0

    (center, pool, submit) = platform.calls
    assert center[:2] == ("POST", "/api/v1/centers/")
    assert center[2] == {
        "name": "Zhangjiakou DC 1",
        "cluster": "ZJK",
        "latitude": 40.77,
        "longitude": 114.88,
        "pue": 1.2,
        "green_power_share": 0.6,
        "agent_endpoint": endpoint,
    }
    assert pool[:2] == ("POST", "/api/v1/pools/")
    assert pool[2] == {
        "center": "CN-ZJK-0042",
        "name": "nvidia-h100-sxm x16",
        "accelerator": "nvidia-h100-sxm",
        "accelerators_per_node": 8,
        "nodes": 2,
        "intra_node_interconnect": "nvlink",
        "inter_node_interconnect": "infiniband",
        "price_per_accelerator_hour": 18.5,
        "currency": "CNY",
        "declared_tflops_per_accelerator": 989.0,
        "declared_precision": "bf16",
        "traits": ["liquid-cooled"],
    }
    assert submit[:2] == ("POST", "/api/v1/pools/CN-ZJK-0042-P1/submit/")
    assert {call[3] for call in platform.calls} == {"Bearer tok-123"}
    out = capsys.readouterr().out
    assert "center CN-ZJK-0042" in out
    assert "--pool-id nvidia-h100-sxm=CN-ZJK-0042-P1" in out


def test_register_prints_field_errors_and_fails_on_http_400(
    platform: FakePlatform, start_agent: StartAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    platform.refuse_pools = True
    runtime, _ = start_agent(simulated_config())

    assert main(register_argv(platform, f"127.0.0.1:{runtime.port}")) == 1

    err = capsys.readouterr().err
    assert "HTTP 400" in err
    assert "accelerator: Unknown accelerator model." in err
    assert "nodes: Bad." in err


def test_register_fails_when_the_platform_is_unreachable(
    platform: FakePlatform, start_agent: StartAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime, _ = start_agent(simulated_config())
    argv = register_argv(platform, f"127.0.0.1:{runtime.port}")
    argv[argv.index("--platform-url") + 1] = "http://127.0.0.1:9"  # discard port: refused

    assert main(argv) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert platform.calls == []


def test_register_fails_when_the_agent_is_unreachable(
    platform: FakePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*register_argv(platform, "127.0.0.1:9")]) == 1
    assert "did not answer GetInventory" in capsys.readouterr().err
    assert platform.calls == []


def test_register_refuses_missing_center_facts_before_calling_anyone(
    platform: FakePlatform, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = register_argv(platform, "127.0.0.1:9")
    del argv[argv.index("--pue") : argv.index("--pue") + 2]
    argv.append("--local")
    argv.extend(["--simulate", "honest"])
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "center facts missing: --pue" in capsys.readouterr().err
    assert platform.calls == []
