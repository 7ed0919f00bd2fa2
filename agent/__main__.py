"""Command line of the site agent.

    python -m agent [serve] [--config FILE] [--port P] [--model M ...]   # a real agent
    python -m agent --simulate honest --port 50061                       # one simulated center
    python -m agent --simulate honest:50061 --simulate cheat-wrong:50062 # several, one process
    python -m agent register --platform-url URL --token T --agent-endpoint HOST:PORT ...
    python -m agent certificate --platform-url URL --token T --center-id ID --tls-dir DIR

A simulation spec is ``MODE[:PORT][:KEY=VALUE...]`` with keys model, accelerators, nodes,
declared-tflops, speed-factor, agent-id, center-id; a spec without a port uses ``--port``.
See ``docs/agent.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import FrameType

from agent import __version__
from agent.backends import BACKENDS, backend_for, measure
from agent.certificate import obtain_certificate
from agent.challenge import PRECISIONS
from agent.config import (
    SCHEDULERS,
    AgentConfig,
    CenterConfig,
    ConfigError,
    PoolConfig,
    SimulationConfig,
    SimulationMode,
    agent_config_from_mapping,
    declared_tflops_for,
    load_file,
)
from agent.heartbeat import HeartbeatSender
from agent.register import (
    ApiError,
    ApiUnreachable,
    field_messages,
    pools_from_agent,
    register,
    with_commercial_terms,
)
from agent.server import AgentRuntime, build_server
from agent.slurm.cli import SlurmError
from agent.slurm.config import SlurmConfig, SlurmConfigError
from agent.workloads import WorkloadRunner
from rpckit.tls import TlsError

logger = logging.getLogger("agent")

DEFAULT_SIMULATED_MODEL = "nvidia-h100-sxm"
TOKEN_ENV = "INTERCONNECT_AGENT_TOKEN"
SPEC_KEYS = (
    "model",
    "accelerators",
    "nodes",
    "declared-tflops",
    "speed-factor",
    "agent-id",
    "center-id",
)


@dataclass(frozen=True)
class SimulationSpec:
    """One ``--simulate`` argument: a mode, an optional port and per-center overrides."""

    mode: SimulationMode
    port: int | None
    overrides: dict[str, str]


def parse_simulation_spec(text: str) -> SimulationSpec:
    """Parse ``MODE[:PORT][:KEY=VALUE...]``; argparse turns errors into a usage message."""
    mode_text, *rest = text.split(":")
    try:
        mode = SimulationMode(mode_text)
    except ValueError:
        modes = ", ".join(m.value for m in SimulationMode)
        raise argparse.ArgumentTypeError(f"unknown mode {mode_text!r} (one of {modes})") from None
    port: int | None = None
    if rest and "=" not in rest[0]:
        port = _port(rest.pop(0))
    overrides: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or key not in SPEC_KEYS:
            raise argparse.ArgumentTypeError(
                f"bad item {item!r} in {text!r}: expected KEY=VALUE with KEY in {SPEC_KEYS}"
            )
        overrides[key] = value
    return SimulationSpec(mode=mode, port=port, overrides=overrides)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range 0..65535")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text) if text.isdigit() else -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


# --- argument parsers ------------------------------------------------------------------------


def add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that describe one pool (they replace the pools of the config file)."""
    group = parser.add_argument_group("pool (replaces the config file's pools when --model is set)")
    group.add_argument("--model", help="accelerator catalog slug, e.g. nvidia-h100-sxm")
    group.add_argument("--pool-key", help="pool key inside the agent (default: the model slug)")
    group.add_argument("--accelerators", type=_positive_int, help="accelerators per node (8)")
    group.add_argument("--nodes", type=_positive_int, help="nodes in the pool (1)")
    group.add_argument(
        "--declared-tflops",
        type=_positive_float,
        help="declared dense TFLOPS per accelerator (default: built-in table)",
    )
    group.add_argument("--intra-node-interconnect", help="e.g. nvlink, hccs, pcie")
    group.add_argument("--inter-node-interconnect", help="e.g. infiniband-ndr, roce-200g")


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, shared by serve and register."""
    parser.add_argument("--config", metavar="FILE", help="JSON (.json) or TOML config file")


def serve_parser() -> argparse.ArgumentParser:
    """Parser of ``python -m agent [serve]``."""
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Run a site agent (real, or simulated centers with --simulate). "
        "Use 'python -m agent register --help' to register a center.",
    )
    parser.add_argument("--version", action="version", version=f"agent {__version__}")
    add_config_argument(parser)
    parser.add_argument("--agent-id", help="stable identifier of this agent")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=_port, help="port to bind (default 50051; 0 = any free)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="how a real agent computes challenges: numpy (host CPU, the default) or torch "
        "(CUDA devices, or Ascend through torch_npu; torch is imported only then)",
    )
    add_pool_arguments(parser)

    sim = parser.add_argument_group("simulation")
    sim.add_argument(
        "--simulate",
        metavar="MODE[:PORT][:KEY=VALUE...]",
        type=parse_simulation_spec,
        action="append",
        default=[],
        help="simulate a center; repeat for several centers in one process. MODE is one of "
        + ", ".join(m.value for m in SimulationMode),
    )
    sim.add_argument(
        "--time-scale", type=_positive_float, help="simulated time factor (1.0 = real time)"
    )
    sim.add_argument(
        "--speed-factor",
        type=_positive_float,
        help="emulated speed / declared speed (default 0.5 in slow mode, else 1.0)",
    )
    sim.add_argument(
        "--flaky-failures",
        type=_non_negative_int,
        help="calls of GetInventory that fail in flaky mode (default 2)",
    )

    sched = parser.add_argument_group("scheduler (docs/slurm.md)")
    sched.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="run workloads in-process (inprocess, the default: demos and tests) or through "
        "the center's Slurm (slurm: pools, reservations, jobs and usage from Slurm)",
    )
    sched.add_argument("--slurm-user", help="the service account (default: the current user)")
    sched.add_argument("--slurm-conf", help="slurm.conf to use (default: Slurm's own lookup)")
    sched.add_argument("--slurm-bin-dir", help="where sinfo, scontrol... live (default: PATH)")
    sched.add_argument(
        "--slurm-partition", action="append", default=[], help="partition to front (repeatable)"
    )
    sched.add_argument(
        "--slurm-model",
        metavar="GRES_TYPE=SLUG",
        action="append",
        default=[],
        help="catalog slug of a GRES type, e.g. a100=nvidia-a100-80g (repeatable)",
    )
    sched.add_argument("--slurm-workdir", help="jobs' working directory and output (/tmp)")
    sched.add_argument(
        "--slurm-container", help="wraps commands, e.g. 'apptainer exec docker://{image}'"
    )
    sched.add_argument("--slurm-prefix", help="name prefix of its reservations and jobs (ic-)")
    sched.add_argument(
        "--slurm-no-accounting", action="store_true", help="no slurmdbd: usage from squeue times"
    )

    parser.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="mutual TLS with the platform: agent.pem, agent.key and ca.pem from "
        "'python -m agent certificate' (docs/tls.md); without it the agent speaks plaintext",
    )
    beat = parser.add_argument_group("heartbeats (sent when --platform and --token are given)")
    beat.add_argument("--platform", metavar="HOST:PORT", help="the platform's Telemetry service")
    beat.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV})")
    beat.add_argument("--heartbeat-interval", type=_positive_float, help="seconds (default 5)")
    beat.add_argument("--platform-tls", action="store_true", help="use TLS to the platform")
    beat.add_argument("--center-id", help="the center's national id (from registration)")
    beat.add_argument(
        "--pool-id",
        metavar="KEY=NATIONAL_ID",
        type=_key_value,
        action="append",
        default=[],
        help="a pool's national id, sent with heartbeats (repeatable)",
    )
    return parser


def register_parser() -> argparse.ArgumentParser:
    """Parser of ``python -m agent register``."""
    parser = argparse.ArgumentParser(
        prog="python -m agent register",
        description="Register this agent's center and pools with the platform and submit the "
        "pools for verification.",
    )
    add_config_argument(parser)
    parser.add_argument("--platform-url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", help=f"API token (default: ${TOKEN_ENV})")
    parser.add_argument(
        "--agent-endpoint",
        required=True,
        metavar="HOST:PORT",
        help="where the platform reaches this agent",
    )
    parser.add_argument("--center-name", help="the center's name")
    parser.add_argument("--cluster", help="data-center cluster code, e.g. ZJK")
    parser.add_argument("--latitude", type=float)
    parser.add_argument("--longitude", type=float)
    parser.add_argument("--pue", type=float, help="power usage effectiveness, e.g. 1.25")
    parser.add_argument("--green-power-share", type=float, help="0..1")
    parser.add_argument("--price", type=float, help="CNY per accelerator-hour, for every pool")
    parser.add_argument("--trait", action="append", default=[], help="trait slug (repeatable)")
    parser.add_argument(
        "--local",
        action="store_true",
        help="take pools from the config file or pool flags instead of asking the agent",
    )
    parser.add_argument(
        "--simulate",
        type=parse_simulation_spec,
        help="with --local: describe the pools as this simulated center would",
    )
    parser.add_argument(
        "--tls-dir",
        metavar="DIR",
        help="also obtain the center's agent certificate into DIR (key made here; docs/tls.md)",
    )
    add_pool_arguments(parser)
    return parser


def certificate_parser() -> argparse.ArgumentParser:
    """Parser of ``python -m agent certificate`` (issue or renew)."""
    parser = argparse.ArgumentParser(
        prog="python -m agent certificate",
        description="Obtain or renew this agent's certificate: make a key here, send a CSR to "
        "the platform, store agent.key, agent.pem and ca.pem in --tls-dir. A running agent "
        "picks the new files up without a restart.",
    )
    parser.add_argument("--platform-url", required=True, help="e.g. https://platform.example")
    parser.add_argument("--token", help=f"the operator's API token (default: ${TOKEN_ENV})")
    parser.add_argument("--center-id", required=True, help="the center's national id")
    parser.add_argument("--tls-dir", required=True, metavar="DIR")
    return parser


# --- building configurations ----------------------------------------------------------------


def _base_config(path: str | None) -> AgentConfig:
    return agent_config_from_mapping(load_file(path)) if path else AgentConfig()


def _interconnects(model: str) -> tuple[str, str]:
    """Plausible default interconnects of a simulated pool, by vendor."""
    if model.startswith("nvidia-"):
        return "nvlink", "infiniband"
    if model.startswith("huawei-"):
        return "hccs", "roce"
    return "pcie", "ethernet"


def pool_from_flags(
    args: argparse.Namespace, overrides: dict[str, str], *, simulated: bool
) -> PoolConfig | None:
    """The pool the flags (and a spec's overrides) describe, or None if they describe none."""
    model = overrides.get("model") or args.model
    if model is None and not simulated:
        return None
    model = model or DEFAULT_SIMULATED_MODEL
    intra, inter = _interconnects(model) if simulated else ("", "")
    tflops = overrides.get("declared-tflops")
    return PoolConfig(
        key=(args.pool_key if not overrides.get("model") else None) or model,
        accelerator_model=model,
        accelerators_per_node=int(overrides.get("accelerators") or args.accelerators or 8),
        nodes=int(overrides.get("nodes") or args.nodes or 1),
        intra_node_interconnect=args.intra_node_interconnect or intra,
        inter_node_interconnect=args.inter_node_interconnect or inter,
        declared_tflops_per_accelerator=float(tflops)
        if tflops
        else args.declared_tflops or (declared_tflops_for(model) if simulated else 0.0),
    )


def serve_configs(args: argparse.Namespace) -> list[AgentConfig]:
    """One AgentConfig per gRPC server to run: the real agent, or each simulated center."""
    base = _base_config(args.config)
    token = args.token or os.environ.get(TOKEN_ENV) or base.heartbeat.token
    heartbeat = replace(
        base.heartbeat,
        platform=args.platform or base.heartbeat.platform,
        token=token,
        interval_seconds=args.heartbeat_interval or base.heartbeat.interval_seconds,
        tls=args.platform_tls or base.heartbeat.tls,
    )
    base = replace(
        base,
        agent_id=args.agent_id or base.agent_id,
        host=args.host or base.host,
        port=base.port if args.port is None else args.port,
        heartbeat=heartbeat,
        center=replace(base.center, national_id=args.center_id or base.center.national_id),
        backend=args.backend or base.backend,
        tls_dir=args.tls_dir or base.tls_dir,
    )
    specs: list[SimulationSpec] = args.simulate
    if (args.scheduler or base.scheduler) == "slurm":
        if specs or base.simulation is not None:
            raise ConfigError("a simulated center has no Slurm: drop --simulate or --scheduler")
        return [replace(base, scheduler="slurm", slurm=_slurm_config(base.slurm, args))]
    if not specs:
        if base.simulation is not None:  # simulated through the config file only
            specs = [SimulationSpec(base.simulation.mode, None, {})]
        else:
            return [_with_pool_ids(_with_flag_pool(base, args, {}, simulated=False), args)]
    if sum(spec.port is None for spec in specs) > 1:
        raise ConfigError("several --simulate specs without a port: give each one MODE:PORT")
    configs = []
    for spec in specs:
        file_sim = base.simulation or SimulationConfig()
        simulation = SimulationConfig(
            mode=spec.mode,
            time_scale=args.time_scale or file_sim.time_scale,
            speed_factor=float(spec.overrides["speed-factor"])
            if "speed-factor" in spec.overrides
            else args.speed_factor or file_sim.speed_factor,
            flaky_failures=file_sim.flaky_failures
            if args.flaky_failures is None
            else args.flaky_failures,
        )
        port = base.port if spec.port is None else spec.port
        default_id = base.agent_id if len(specs) == 1 and base.agent_id != "agent" else None
        config = replace(
            base,
            simulation=simulation,
            port=port,
            agent_id=spec.overrides.get("agent-id") or default_id or f"sim-{spec.mode}-{port}",
            center=replace(
                base.center, national_id=spec.overrides.get("center-id", base.center.national_id)
            ),
        )
        configs.append(_with_pool_ids(_with_flag_pool(config, args, spec.overrides), args))
    return configs


def _slurm_config(base: SlurmConfig | None, args: argparse.Namespace) -> SlurmConfig:
    """The ``[slurm]`` table overridden by the ``--slurm-*`` flags."""
    base = base or SlurmConfig()
    try:
        return replace(
            base,
            user=args.slurm_user or base.user,
            conf=args.slurm_conf or base.conf,
            bin_dir=args.slurm_bin_dir or base.bin_dir,
            partitions=tuple(args.slurm_partition) or base.partitions,
            models=tuple(args.slurm_model) or base.models,
            workdir=args.slurm_workdir or base.workdir,
            container=base.container if args.slurm_container is None else args.slurm_container,
            prefix=args.slurm_prefix or base.prefix,
            accounting=base.accounting and not args.slurm_no_accounting,
        )
    except SlurmConfigError as exc:
        raise ConfigError(str(exc)) from exc


def slurm_runtime(
    config: AgentConfig, args: argparse.Namespace | None = None
) -> tuple[AgentConfig, WorkloadRunner]:
    """The Slurm backend for ``config`` and the config with Slurm's pools (flag pool and
    configured pools lend their prices, names, interconnects and national ids)."""
    from agent.slurm.scheduler import SlurmScheduler

    assert config.slurm is not None
    template = pool_from_flags(args, {}, simulated=False) if args and args.model else None
    scheduler = SlurmScheduler(config.slurm, pool_template=template, configured=config.pools)
    config = scheduler.agent_config(config)
    if args is not None:
        config = _with_pool_ids(config, args)
    return config, scheduler


def _with_flag_pool(
    config: AgentConfig,
    args: argparse.Namespace,
    overrides: dict[str, str],
    *,
    simulated: bool = True,
) -> AgentConfig:
    """Replace the config's pools by the one the flags describe, when they describe one."""
    if args.model or overrides.get("model") or (simulated and not config.pools):
        pool = pool_from_flags(args, overrides, simulated=simulated)
        assert pool is not None
        config = replace(config, pools=(pool,))
    if not config.pools:
        raise ConfigError("no pools: pass --model (and --accelerators, --nodes) or a config file")
    if simulated:
        for pool in config.pools:
            if pool.declared_tflops_per_accelerator <= 0:
                raise ConfigError(f"pool {pool.key!r} needs declared TFLOPS to be simulated")
    return config


def _with_pool_ids(config: AgentConfig, args: argparse.Namespace) -> AgentConfig:
    ids = dict(args.pool_id)
    unknown = set(ids) - {pool.key for pool in config.pools}
    if unknown:
        raise ConfigError(f"--pool-id names unknown pool keys {sorted(unknown)}")
    pools = tuple(replace(p, national_id=ids.get(p.key, p.national_id)) for p in config.pools)
    return replace(config, pools=pools)


# --- commands --------------------------------------------------------------------------------


def serve(argv: Sequence[str]) -> int:
    """Run the agent servers until SIGTERM or SIGINT, then stop them gracefully."""
    parser = serve_parser()
    args = parser.parse_args(argv)
    try:
        configs = serve_configs(args)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    runtimes: list[AgentRuntime] = []
    senders: list[HeartbeatSender] = []
    try:
        for config in configs:
            workloads = None
            if config.scheduler == "slurm":
                config, workloads = slurm_runtime(config, args)
            runtime = build_server(config.address, agent_config=config, workloads=workloads)
            runtimes.append(runtime)
            mode = (
                config.simulation.mode
                if config.simulation
                else ("slurm" if config.scheduler == "slurm" else "real")
            )
            # One parseable line per server: scripts and tests read the bound port from it.
            print(
                f"agent {config.agent_id} ({mode}) listening on {config.host}:{runtime.port}",
                flush=True,
            )
            if config.heartbeat.enabled:
                sender = HeartbeatSender(config, runtime.workloads)
                sender.start()
                senders.append(sender)
    except (OSError, RuntimeError, SlurmError, TlsError) as exc:
        print(f"error: cannot start the agent: {exc}", file=sys.stderr)
        stopping.set()
        status = 1
    else:
        status = 0
    stopping.wait()
    for sender in senders:
        sender.stop()
    # Stop every server at once so the grace periods overlap instead of adding up.
    for done in [runtime.stop() for runtime in runtimes]:
        done.wait()
    return status


def register_command(argv: Sequence[str]) -> int:
    """Register the center and its pools; print the national ids. Non-zero exit on failure."""
    parser = register_parser()
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"--token is required (or set ${TOKEN_ENV})")
    try:
        base = _base_config(args.config)
        file_center = base.center
        center = CenterConfig(
            name=args.center_name or file_center.name,
            cluster=args.cluster or file_center.cluster,
            latitude=_first(args.latitude, file_center.latitude),
            longitude=_first(args.longitude, file_center.longitude),
            pue=_first(args.pue, file_center.pue),
            green_power_share=_first(args.green_power_share, file_center.green_power_share),
        )
        if args.local:
            config = _with_flag_pool(base, args, {}, simulated=args.simulate is not None)
            pools = config.pools
        else:
            pools = pools_from_agent(args.agent_endpoint)
        pools = with_commercial_terms(pools, base.pools, price=args.price, traits=args.trait)
        registration = register(
            platform_url=args.platform_url,
            token=token,
            center=center,
            pools=pools,
            agent_endpoint=args.agent_endpoint,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for line in field_messages(exc.body):
            print(f"  {line}", file=sys.stderr)
        return 1
    except ApiUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.tls_dir:
        try:
            obtained = obtain_certificate(
                platform_url=args.platform_url,
                token=token,
                center_national_id=registration.center_national_id,
                directory=args.tls_dir,
            )
        except (ApiError, ApiUnreachable) as exc:
            print(f"error: the center is registered, but its certificate: {exc}", file=sys.stderr)
            if isinstance(exc, ApiError):
                for line in field_messages(exc.body):
                    print(f"  {line}", file=sys.stderr)
            return 1
        print(f"certificate {obtained.serial} {obtained.identity} until {obtained.not_after}")
    print(f"center {registration.center_national_id}")
    for key, national_id in registration.pool_national_ids.items():
        print(f"pool {key} {national_id} submitted")
    print(
        "heartbeat flags: --center-id "
        + registration.center_national_id
        + "".join(f" --pool-id {k}={v}" for k, v in registration.pool_national_ids.items())
    )
    return 0


def certificate_command(argv: Sequence[str]) -> int:
    """Obtain or renew the agent's certificate; print its serial, identity and expiry."""
    parser = certificate_parser()
    args = parser.parse_args(argv)
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"--token is required (or set ${TOKEN_ENV})")
    try:
        obtained = obtain_certificate(
            platform_url=args.platform_url,
            token=token,
            center_national_id=args.center_id,
            directory=args.tls_dir,
        )
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for line in field_messages(exc.body):
            print(f"  {line}", file=sys.stderr)
        return 1
    except (ApiUnreachable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"certificate {obtained.serial} {obtained.identity} until {obtained.not_after} "
        f"in {obtained.directory}"
    )
    return 0


def _first(*values: float | None) -> float | None:
    return next((value for value in values if value is not None), None)


def measure_command(argv: Sequence[str]) -> int:
    """Time a chain on device 0 of a backend and print its TFLOPS: what this host really does,
    for an operator to declare (and for the platform's verifier to check)."""
    parser = argparse.ArgumentParser(
        prog="python -m agent measure",
        description="Measure one device's throughput on a challenge chain, timed locally.",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="numpy")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--n", type=_positive_int, default=1024, help="matrix size (1024)")
    parser.add_argument("--steps", type=_positive_int, default=8, help="chain length (8)")
    args = parser.parse_args(argv)
    try:
        backend = backend_for(args.backend)
    except ImportError as exc:
        print(f"error: backend {args.backend} is not available: {exc}", file=sys.stderr)
        return 1
    value = measure(backend, args.precision, args.n, args.steps)
    print(f"{value:.4f} TFLOPS per device ({args.backend}, {args.precision}, n={args.n})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``register``, ``measure`` or ``serve`` (the default when no command is named)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "register":
        return register_command(args[1:])
    if args and args[0] == "certificate":
        return certificate_command(args[1:])
    if args and args[0] == "measure":
        return measure_command(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
