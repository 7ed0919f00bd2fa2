"""The docs' command-line walk-through runs as printed on ``make run``'s demo data.

The commands are read from docs/broker.md ("First query, placement and booking"), not copied here:
``seed_demo`` makes the demo tenants, centers, pools and tokens (in a private ``var/``), the
demo pools are put where verification puts them (``active``: this test is about the broker, not
the verifier), and each command runs through the installed ``interconnect`` entry point against
a broker on loopback, in the page's order. ``BK-...`` stands for the booking the previous
commands made. ``book --watch`` follows its booking until it ends: the booking is cancelled
once the command printed it, as a firm would from another terminal.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from brokers import services
from brokers.models import Booking
from brokers.rpc.server import BrokerRuntime, build_server
from registry.models import Center, Pool
from tests.brokers.broker_testing import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def readme_commands() -> list[str]:
    """The shell lines of the walk-through's code block (continuations joined, comments cut)."""
    text = (ROOT / "docs" / "broker.md").read_text()
    section = text.split("## First query, placement and booking", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    lines: list[str] = []
    pending = ""
    for raw in block.splitlines():
        line = re.sub(r"\s+#\s.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        lines.append((pending + line.strip()).strip())
        pending = ""
    return [line for line in lines if line]


@pytest.fixture
def broker() -> Iterator[BrokerRuntime]:
    runtime = build_server("127.0.0.1:0", max_workers=4)
    yield runtime
    runtime.stop(grace=0).wait()


def test_the_readme_walkthrough_runs_as_printed_on_the_demo_data(
    broker: BrokerRuntime, tmp_path: Path, settings: Any
) -> None:
    settings.VAR_DIR = tmp_path / "var"
    settings.VAR_DIR.mkdir()
    call_command("seed_demo", no_submit=True, stdout=open(os.devnull, "w"))
    # Where verification puts the demo pools when their agents answer (README "make run").
    Pool.objects.update(status="active", measured_tflops_per_accelerator=None)
    Center.objects.update(status="active")
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    commands = readme_commands()
    assert commands[0].startswith("export INTERCONNECT_TOKEN=")
    token = subprocess.run(
        ["bash", "-c", commands[0] + ' && printf %s "$INTERCONNECT_TOKEN"'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert token == json.loads((settings.VAR_DIR / "demo-tokens.json").read_text())["deepcurrent"]
    env = {
        **os.environ,
        "INTERCONNECT_TOKEN": token,
        "INTERCONNECT_BROKER": f"127.0.0.1:{broker.port}",
    }
    env["PYTHONUNBUFFERED"] = "1"  # the watch is read line by line
    made: dict[str, str] = {}  # "watched": the --watch booking, "held": the --hold one
    said: list[str] = []
    for command in commands[1:]:
        assert command.startswith(".venv/bin/interconnect "), command
        verb = command.split()[1]
        # BK-... is the booking a reader would name: the held one to confirm and cancel, the
        # first one (ended by then) to watch.
        command = command.replace("BK-...", made.get("watched" if verb == "watch" else "held", ""))
        if "--watch" in command:
            out = _book_and_cancel_from_elsewhere(command, env, tmp_path)
        else:
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, (command, done.stdout, done.stderr)
            assert done.stderr == "", (command, done.stderr)
            out = done.stdout
        said.append(out)
        if match := re.search(r"booking (BK-[0-9A-F-]+):", out):
            made.setdefault("watched" if "--watch" in command else "held", match[1])
    # capacity: every demo pool; filtered: the A100 pool of Inner Mongolia, not "0 pools".
    assert said[0].rstrip().endswith("3 pools, 480 accelerators free"), said[0]
    assert said[1].rstrip().endswith("1 pool, 96 accelerators free") and " IM " in said[1]
    assert "why:" in said[2] and "why:" in said[3]
    assert "idempotency key: my-first-run" in said[4] and "ended: cancelled" in said[4]
    assert "held until" in said[5] and ": confirmed," in said[6]
    assert made["held"] in said[7] and made["watched"] in said[7]
    assert "ended: cancelled" in said[8] and ": cancelled," in said[9]
    assert Booking.objects.filter(idempotency_key="my-first-run").count() == 1


def _book_and_cancel_from_elsewhere(command: str, env: dict[str, str], cwd: Path) -> str:
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if match := re.match(r"booking (BK-[0-9A-F-]+):", line):
            booking = Booking.objects.get(national_id=match[1])
            services.booking_cancel(booking=booking, actor=booking.created_by, door="cli")
            break
    rest, err = process.communicate(timeout=60)
    assert process.returncode == 0, (command, err)
    return "".join(lines) + rest
