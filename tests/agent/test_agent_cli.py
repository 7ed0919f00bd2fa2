"""The agent's command line: argument errors, config files, and a real process on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from agent.__main__ import main, serve_configs, serve_parser
from agent.config import ConfigError, SimulationMode, agent_config_from_mapping, load_file
from protos import agent_pb2, agent_pb2_grpc

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--simulate", "lazy"], "unknown mode 'lazy'"),
        (["--simulate", "honest:notaport"], "port must be a number"),
        (["--simulate", "honest:70000"], "out of range"),
        (["--simulate", "honest:1:colour=red"], "bad item"),
        (["--simulate", "honest", "--time-scale", "0"], "must be > 0"),
        (["--simulate", "honest", "--accelerators", "-3"], "must be >= 1"),
        (["--simulate", "honest", "--simulate", "slow"], "without a port"),
        (["--simulate", "honest", "--model", "acme-x1"], "no built-in declared TFLOPS"),
        (["--config", "/nonexistent/agent.toml"], "cannot read config file"),
        ([], "no pools"),
        (["register", "--token", "t"], "the following arguments are required"),
        (
            ["register", "--platform-url", "http://x", "--agent-endpoint", "h:1"],
            "--token is required",
        ),
    ],
)
def test_bad_arguments_exit_non_zero_with_a_message(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("INTERCONNECT_AGENT_TOKEN", raising=False)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code != 0
    assert message in capsys.readouterr().err


def test_several_simulated_centers_get_their_own_port_mode_and_model() -> None:
    args = serve_parser().parse_args(
        [
            "--simulate",
            "honest:50061",
            "--simulate",
            "cheat-wrong:50062:model=huawei-ascend-910b:accelerators=16:agent-id=gz-1",
            "--time-scale",
            "1e-5",
        ]
    )
    honest, cheat = serve_configs(args)
    assert (honest.port, honest.agent_id, honest.pools[0].accelerator_model) == (
        50061,
        "sim-honest-50061",
        "nvidia-h100-sxm",
    )
    assert honest.simulation is not None and honest.simulation.time_scale == 1e-5
    assert cheat.simulation is not None and cheat.simulation.mode is SimulationMode.CHEAT_WRONG
    assert (cheat.port, cheat.agent_id) == (50062, "gz-1")
    assert cheat.pools[0].accelerator_model == "huawei-ascend-910b"
    assert cheat.pools[0].accelerators_per_node == 16
    assert cheat.pools[0].declared_tflops_per_accelerator == 320.0


def test_a_toml_config_file_describes_pools_center_and_heartbeats(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        """
agent_id = "zjk-dc1"
port = 0
[simulation]
mode = "slow"
time_scale = 1e-4
[center]
name = "Zhangjiakou DC 1"
cluster = "ZJK"
latitude = 40.77
longitude = 114.88
national_id = "CN-ZJK-0001"
[heartbeat]
platform = "127.0.0.1:1"
token = "secret"
interval_seconds = 2
[[pools]]
key = "h100"
accelerator_model = "nvidia-h100-sxm"
accelerators_per_node = 8
nodes = 4
declared_tflops_per_accelerator = 989
price_per_accelerator_hour = 18.5
traits = ["liquid-cooled"]
"""
    )
    (config,) = serve_configs(serve_parser().parse_args(["--config", str(path)]))
    assert config.agent_id == "zjk-dc1"
    assert config.simulation is not None
    assert config.simulation.effective_speed_factor == 0.5
    assert config.pools[0].accelerators == 32
    assert config.pools[0].traits == ("liquid-cooled",)
    assert config.heartbeat.enabled and config.heartbeat.interval_seconds == 2.0
    assert config.center.national_id == "CN-ZJK-0001"


def test_a_json_config_file_with_a_typo_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"agent_id": "a", "pools": [{"key": "p", "modle": "x"}]}))
    with pytest.raises(ConfigError, match=r"pools\[0\]: unknown keys \['modle'\]"):
        agent_config_from_mapping(load_file(path))
    path.write_text(json.dumps({"port": "50051"}))
    with pytest.raises(ConfigError, match="config.port: expected int"):
        agent_config_from_mapping(load_file(path))


def test_the_agent_process_serves_several_centers_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "--simulate",
            "honest:0",
            "--simulate",
            "flaky:0",
            "--time-scale",
            "1e-5",
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(2)]
        ports = [int(re.search(r":(\d+)$", line.strip()).group(1)) for line in lines]  # type: ignore[union-attr]
        assert "(honest)" in lines[0] and "(flaky)" in lines[1]
        with grpc.insecure_channel(f"127.0.0.1:{ports[0]}") as channel:
            inventory = agent_pb2_grpc.AgentStub(channel).GetInventory(
                agent_pb2.GetInventoryRequest(), timeout=10
            )
        assert inventory.simulated
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
