"""Run one simulated site agent per demo center (``make run``), heartbeating to the platform.

Each agent serves the center's declared ``agent_endpoint`` port, simulates its pools honestly (or
in the mode given with ``--mode OPERATOR=MODE``), and sends heartbeats to the Telemetry service
with its operator's demo token from ``var/demo-tokens.json``. With the platform's certificate
configured (``PLATFORM_TLS_DIR``, as ``make run`` does), each agent gets its center's certificate
and speaks mutual TLS only. SIGTERM or SIGINT stops them all.
"""

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from registry import certificates
from registry.choices import Status
from registry.data import demo
from registry.management.commands.agent_certificate import current, issue_into
from registry.models import Center


def agent_command(
    center: Center,
    *,
    mode: str,
    time_scale: float,
    platform: str,
    token: str,
    tls_dir: str = "",
) -> list[str]:
    """The ``python -m agent`` command line that simulates ``center``'s pools (mutual TLS with
    the certificate in ``tls_dir`` when given)."""
    host, _, port = center.agent_endpoint.rpartition(":")
    pools = list(center.pools.exclude(status=Status.RETIRED).select_related("accelerator"))
    if len(pools) != 1:
        raise CommandError(f"{center.national_id}: the demo launcher simulates one pool per center")
    pool = pools[0]
    spec = (
        f"{mode}:{port}:model={pool.accelerator.slug}:accelerators={pool.accelerators_per_node}"
        f":nodes={pool.nodes}:declared-tflops={pool.declared_tflops_per_accelerator}"
        f":agent-id=demo-{center.national_id.lower()}"
    )
    return [
        sys.executable,
        "-m",
        "agent",
        "--host",
        host or "127.0.0.1",
        "--simulate",
        spec,
        "--time-scale",
        str(time_scale),
        "--platform",
        platform,
        "--token",
        token,
        "--center-id",
        center.national_id,
        "--pool-id",
        f"{pool.accelerator.slug}={pool.national_id}",
        *(["--tls-dir", tls_dir] if tls_dir else []),
    ]


class Command(BaseCommand):
    help = "Run a simulated site agent for every demo center (honest unless --mode says so)."

    def _certificate(self, center: Center) -> str:
        """With mutual TLS on, the demo agent's certificate (issued here unless ``current``:
        missing, due, or one this registry would refuse, since the certificates stay in
        ``PLATFORM_TLS_DIR`` while the database may be new): the platform's launcher plays the
        operator who ran ``python -m agent certificate``."""
        if not certificates.mutual_tls():
            return ""
        directory = Path(settings.PLATFORM_TLS_DIR) / "agents" / center.national_id
        if not current(directory, center):
            issue_into(center, directory)
        return str(directory)

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--time-scale", type=float, default=settings.VERIFICATION_TIME_SCALE)
        parser.add_argument("--platform", default="127.0.0.1:50052", help="Telemetry host:port")
        parser.add_argument(
            "--mode", action="append", default=[], metavar="OPERATOR=MODE", help="e.g. guian=slow"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        tokens_file = settings.VAR_DIR / "demo-tokens.json"
        if not tokens_file.exists():
            raise CommandError(f"{tokens_file} is missing: run `manage.py seed_demo` first")
        tokens = json.loads(tokens_file.read_text())
        modes = dict(item.split("=", 1) for item in options["mode"])
        children: list[subprocess.Popen[bytes]] = []
        for spec in demo.CENTERS:
            center = (
                Center.objects.filter(
                    operator__memberships__user__username=spec["operator"], name=spec["name"]
                ).first()
                or Center.objects.filter(name=spec["name"]).first()
            )
            if center is None:
                raise CommandError(f"demo center {spec['name']!r} is missing: run seed_demo")
            command = agent_command(
                center,
                mode=modes.get(spec["operator"], "honest"),
                time_scale=options["time_scale"],
                platform=options["platform"],
                token=tokens[spec["operator"]],
                tls_dir=self._certificate(center),
            )
            children.append(subprocess.Popen(command))
        stopping = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stopping.set())
        while not stopping.wait(1.0):
            if all(child.poll() is not None for child in children):
                raise CommandError("every demo agent exited")
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=15)
