"""Configuration of a site agent: what it fronts, how it simulates, where it reports.

A configuration is built from a JSON or TOML file (``--config FILE``) and then overridden by
command-line flags. All classes are frozen dataclasses validated on construction, so a running
agent never holds an inconsistent configuration. File layout (TOML; JSON has the same keys)::

    agent_id = "zjk-dc1"
    host = "0.0.0.0"
    port = 50051
    tls_dir = "/etc/interconnect/tls"   # mutual TLS with the platform (docs/tls.md)

    [simulation]            # omit for a real agent
    mode = "honest"         # honest, slow, flaky, cheat-wrong, cheat-partial, cheat-timing
    time_scale = 1e-5
    speed_factor = 1.0      # default 0.5 in mode "slow", 1.0 otherwise
    flaky_failures = 2

    [center]                # used by `python -m agent register` and by heartbeats
    name = "Zhangjiakou DC 1"
    cluster = "ZJK"
    latitude = 40.77
    longitude = 114.88
    pue = 1.25
    green_power_share = 0.6
    national_id = ""        # filled in after registration, sent with heartbeats

    [heartbeat]
    platform = "platform.example:50070"
    token = "..."
    interval_seconds = 5

    [[pools]]
    key = "nvidia-h100-sxm"
    accelerator_model = "nvidia-h100-sxm"
    accelerators_per_node = 8
    nodes = 4
    intra_node_interconnect = "nvlink"
    inter_node_interconnect = "infiniband-ndr"
    declared_tflops_per_accelerator = 989
    declared_precision = "bf16"   # bf16, fp16, fp32 or fp64: what the figure is about
    price_per_accelerator_hour = 18.5
    traits = ["liquid-cooled"]
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.slurm.config import SlurmConfig, SlurmConfigError

MIB = 1024 * 1024
_T = typing.TypeVar("_T")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names it."""


class SimulationMode(StrEnum):
    """How a simulated center behaves when the platform verifies it.

    honest: computes correctly at the declared speed and reports the truth.
    slow: like honest, at half the declared speed (speed factor 0.5), reported truthfully.
    flaky: honest, but the first ``flaky_failures`` calls of GetInventory fail with UNAVAILABLE
        (as while restarting: before the verifier sends its challenge).
    cheat-wrong: returns random matrices of the right shape instead of the products.
    cheat-partial: returns the products with about 1 % of their rows perturbed.
    cheat-timing: sends every commitment at once, before computing (random digests), then
        computes the true products on the host CPU, at its own pace, for the opening.
    cheat-rtt: pads every health-check answer by 0.3 s and computes at 60 % of the declared
        speed, hoping the verifier subtracts the round trip.
    cheat-skip: skips every other step of the chain (sends the previous product again).
    cheat-fast: honest arithmetic 4.3 times faster than declared (speed factor 4.3): a claim
        faster than the datasheet when the declaration is the datasheet figure.
    cheat-precision: computes with FP8 (E4M3) inputs instead of the challenge's precision.
    cheat-one-device: one accelerator answers for every device of the pool, taking turns.
    cheat-replay: answers every challenge with the chain it computed for its first one.
    cheat-one-entry: honest, except one entry of the last product is off by 1.0.
    cheat-shortcut: computes a step of ``inner`` chained products by repeated squaring of B
        (about 2 log2(inner) products), ignoring the links' signs: what passed before the
        signs (protocol v1), a wrong product now.
    cheat-lowrank: approximates each step of ``inner`` > 1 signed links at rank n / 4 (a
        product of many random matrices is nearly low-rank): half the products' flops.
    cheat-factored: computes the linear map of a step of ``inner`` > 1 links once per
        challenge (L and R from the first step's signs) and every step as L X R: 2 products
        a step instead of ``inner``. What protocol v2 (the same signs in every step)
        accepted; a wrong product from step 2 on now.
    cheat-degenerate: no arithmetic at all: commits an all-zero product for every step, paced
        at the declared speed. Under protocol v3 every input after a zero product was zero
        too, so every check but step 1's passed; v4 adds B D(h_t) to each input (full-rank
        whatever was committed), and the always-checked last steps refuse it.
    """

    HONEST = "honest"
    SLOW = "slow"
    FLAKY = "flaky"
    CHEAT_WRONG = "cheat-wrong"
    CHEAT_PARTIAL = "cheat-partial"
    CHEAT_TIMING = "cheat-timing"
    CHEAT_RTT = "cheat-rtt"
    CHEAT_SKIP = "cheat-skip"
    CHEAT_FAST = "cheat-fast"
    CHEAT_PRECISION = "cheat-precision"
    CHEAT_ONE_DEVICE = "cheat-one-device"
    CHEAT_REPLAY = "cheat-replay"
    CHEAT_ONE_ENTRY = "cheat-one-entry"
    CHEAT_SHORTCUT = "cheat-shortcut"
    CHEAT_LOWRANK = "cheat-lowrank"
    CHEAT_FACTORED = "cheat-factored"
    CHEAT_DEGENERATE = "cheat-degenerate"


# Dense BF16/FP16 tensor throughput without sparsity, in TFLOPS per accelerator, from vendor
# data sheets. Only a default for simulation and registration: an operator states the real
# figure with --declared-tflops or `declared_tflops_per_accelerator` in the config file.
DECLARED_TFLOPS: Mapping[str, float] = {
    "nvidia-h100-sxm": 989.0,
    "nvidia-h100-pcie": 756.0,
    "nvidia-h800-sxm": 989.0,
    "nvidia-h20": 148.0,
    "nvidia-a100-sxm": 312.0,
    "nvidia-a100-pcie": 312.0,
    "nvidia-a800-sxm": 312.0,
    "nvidia-l40s": 362.0,
    "huawei-ascend-910b": 320.0,
    # The platform catalog's slugs (registry/data/accelerators.py), so that a simulated agent of
    # any catalog model starts without --declared-tflops.
    "nvidia-a100-80g": 312.0,
    "nvidia-a800-80g": 312.0,
    "nvidia-h200-sxm": 989.0,
    "nvidia-l20": 119.5,
}


@dataclass(frozen=True)
class PoolConfig:
    """A resource pool: ``nodes`` identical nodes of ``accelerators_per_node`` accelerators.

    ``key`` names the pool inside this agent (requests address pools by it); ``national_id`` is
    the identifier the platform gave the pool at registration, when known. Name, price and traits
    are only used when registering the pool with the platform.
    """

    key: str
    accelerator_model: str
    accelerators_per_node: int = 1
    nodes: int = 1
    intra_node_interconnect: str = ""
    inter_node_interconnect: str = ""
    declared_tflops_per_accelerator: float = 0.0
    # The arithmetic the declared figure is about: bf16, fp16, fp32 or fp64.
    declared_precision: str = "bf16"
    name: str = ""
    price_per_accelerator_hour: float | None = None
    traits: tuple[str, ...] = ()
    national_id: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            raise ConfigError("pool key must not be empty")
        if not self.accelerator_model:
            raise ConfigError(f"pool {self.key!r}: accelerator_model must not be empty")
        if self.accelerators_per_node < 1 or self.nodes < 1:
            raise ConfigError(f"pool {self.key!r}: accelerators_per_node and nodes must be >= 1")
        if self.declared_tflops_per_accelerator < 0:
            raise ConfigError(f"pool {self.key!r}: declared_tflops_per_accelerator must be >= 0")
        if self.declared_precision not in ("bf16", "fp16", "fp32", "fp64"):
            raise ConfigError(
                f"pool {self.key!r}: declared_precision must be bf16, fp16, fp32 or fp64"
            )

    @property
    def accelerators(self) -> int:
        """Total accelerators in the pool."""
        return self.accelerators_per_node * self.nodes


@dataclass(frozen=True)
class SimulationConfig:
    """How a simulated center behaves; see ``docs/agent.md`` for the timing model.

    ``time_scale`` shrinks simulated time: a simulated accelerator runs at
    ``declared TFLOPS * time_scale * speed_factor`` and a workload of ``d`` seconds lasts
    ``d * time_scale`` seconds. Production agents use 1.0; demos and tests use a small value
    (e.g. 1e-5) and configure the platform's verifier with the same one.
    """

    mode: SimulationMode = SimulationMode.HONEST
    time_scale: float = 1.0
    speed_factor: float | None = None
    flaky_failures: int = 2

    def __post_init__(self) -> None:
        if self.time_scale <= 0:
            raise ConfigError("time_scale must be > 0")
        if self.speed_factor is not None and self.speed_factor <= 0:
            raise ConfigError("speed_factor must be > 0")
        if self.flaky_failures < 0:
            raise ConfigError("flaky_failures must be >= 0")

    @property
    def effective_speed_factor(self) -> float:
        """The speed factor in force: the configured one, else 0.5 for "slow", else 1.0."""
        if self.speed_factor is not None:
            return self.speed_factor
        if self.mode is SimulationMode.CHEAT_FAST:
            return 4.3
        return 0.5 if self.mode is SimulationMode.SLOW else 1.0


@dataclass(frozen=True)
class CenterConfig:
    """The computing center the agent belongs to, as registered with the platform."""

    name: str = ""
    cluster: str = ""
    latitude: float | None = None
    longitude: float | None = None
    pue: float | None = None
    green_power_share: float | None = None
    national_id: str = ""


@dataclass(frozen=True)
class HeartbeatConfig:
    """Where and how often the agent reports liveness (the platform's Telemetry service)."""

    platform: str = ""
    token: str = ""
    interval_seconds: float = 5.0
    tls: bool = False

    def __post_init__(self) -> None:
        if self.interval_seconds <= 0:
            raise ConfigError("heartbeat interval_seconds must be > 0")

    @property
    def enabled(self) -> bool:
        """Heartbeats are sent only when both the platform address and a token are known."""
        return bool(self.platform and self.token)


SCHEDULERS = ("inprocess", "slurm")


@dataclass(frozen=True)
class AgentConfig:
    """Everything one agent (one gRPC server) needs.

    ``max_matrix_size``, ``max_steps`` and ``max_challenge_bytes`` (products kept for opening)
    bound benchmark challenges so a caller cannot make
    the agent compute for hours; ``max_message_bytes`` is the gRPC message limit both ways.
    """

    agent_id: str = "agent"
    host: str = "127.0.0.1"
    port: int = 50051
    pools: tuple[PoolConfig, ...] = ()
    simulation: SimulationConfig | None = None
    center: CenterConfig = field(default_factory=CenterConfig)
    heartbeat: HeartbeatConfig = field(default_factory=HeartbeatConfig)
    max_message_bytes: int = 4 * MIB
    max_workers: int = 32
    max_matrix_size: int = 8192
    max_steps: int = 1000
    max_inner: int = 4096
    max_challenge_bytes: int = 4 * 1024 * MIB
    backend: str = "numpy"
    grace_seconds: float = 5.0
    workload_startup_seconds: float = 1.0
    # "inprocess" (threads, for demos and tests) or "slurm" (the center's Slurm; docs/slurm.md).
    scheduler: str = "inprocess"
    slurm: SlurmConfig | None = None
    # Mutual TLS with the platform: agent.pem, agent.key and ca.pem, written by
    # `python -m agent certificate` (docs/tls.md). Empty: plaintext (development only).
    tls_dir: str = ""

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"scheduler must be one of {', '.join(SCHEDULERS)}")
        if self.scheduler == "slurm" and self.simulation is not None:
            raise ConfigError("a simulated center has no Slurm: drop --simulate or --scheduler")
        if not self.agent_id:
            raise ConfigError("agent_id must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is out of range")
        keys = [pool.key for pool in self.pools]
        if len(keys) != len(set(keys)):
            raise ConfigError(f"pool keys must be unique, got {keys}")
        # Benchmark chunks must stay under 1 MiB and one row is the smallest chunk.
        if self.max_matrix_size * 8 > MIB // 2:
            raise ConfigError("max_matrix_size must be <= 65536")
        if self.max_message_bytes < 2 * MIB:
            raise ConfigError("max_message_bytes must be >= 2 MiB (chunks are up to 1 MiB)")

    @property
    def simulated(self) -> bool:
        """True when this agent simulates a center instead of fronting real hardware."""
        return self.simulation is not None

    @property
    def time_scale(self) -> float:
        """Factor applied to simulated durations; 1.0 for a real agent."""
        return self.simulation.time_scale if self.simulation else 1.0

    @property
    def address(self) -> str:
        """The ``host:port`` the gRPC server binds."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def declared_tflops_for(model: str) -> float:
    """The built-in declared throughput of a catalog model; ConfigError if unknown."""
    try:
        return DECLARED_TFLOPS[model]
    except KeyError:
        known = ", ".join(sorted(DECLARED_TFLOPS))
        raise ConfigError(
            f"no built-in declared TFLOPS for model {model!r}; pass --declared-tflops "
            f"(built-in models: {known})"
        ) from None


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (anything else) configuration file into a dict."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table/object at the top level")
    return data


def agent_config_from_mapping(data: Mapping[str, Any]) -> AgentConfig:
    """Build an AgentConfig from a parsed config file, rejecting unknown or ill-typed keys."""
    values = dict(data)
    nested: dict[str, Any] = {}
    if "pools" in values:
        pools = values.pop("pools")
        if not isinstance(pools, list):
            raise ConfigError("pools must be a list of tables")
        nested["pools"] = tuple(
            _from_mapping(PoolConfig, pool, f"pools[{i}]") for i, pool in enumerate(pools)
        )
    for name, cls in (
        ("simulation", SimulationConfig),
        ("center", CenterConfig),
        ("heartbeat", HeartbeatConfig),
        ("slurm", SlurmConfig),
    ):
        if name in values:
            try:
                nested[name] = _from_mapping(cls, values.pop(name), name)
            except SlurmConfigError as exc:
                raise ConfigError(str(exc)) from exc
    return _from_mapping(AgentConfig, values, "config", extra=nested)


def _from_mapping(
    cls: type[_T], data: Any, where: str, *, extra: Mapping[str, Any] | None = None
) -> _T:
    """Construct dataclass ``cls`` from ``data``, coercing scalars to the declared field types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table/object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {
        key: _coerce(value, hints[key], f"{where}.{key}") for key, value in data.items()
    }
    kwargs.update(extra or {})
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check or convert one config value to the type hint of its field."""
    if isinstance(hint, types.UnionType):  # "X | None"
        if value is None:
            return None
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        try:
            return hint(value)
        except ValueError:
            allowed = ", ".join(member.value for member in hint)
            raise ConfigError(f"{where}: {value!r} is not one of {allowed}") from None
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
