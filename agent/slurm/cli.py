"""Slurm's own command line, run and parsed: ``sinfo``, ``scontrol``, ``sbatch``, ``squeue``,
``sacct``, ``scancel``.

Why the command line and not ``slurmrestd``: the CLI is on every Slurm cluster, speaks the
controller's own protocol with munge authentication (no JWT set-up, no extra daemon), and covers
everything the agent needs on Slurm 22.05, the version Debian 12 ships; ``slurmrestd`` there
(API v0.0.36-v0.0.38) has no reservation endpoints at all (they arrived in Slurm 25.05), so the
agent would need the CLI anyway. Every call has a timeout, passes arguments as a list (no
shell), and uses the parsable output formats (``-o`` with ``|``, ``scontrol -o``, ``sacct -P``).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

logger = logging.getLogger(__name__)

# Client commands take about 9 s to give up when the controller is down.
DEFAULT_TIMEOUT = 20.0
_UNREACHABLE = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted",
    "Slurm backup controller in standby",
)


class SlurmError(Exception):
    """A Slurm command failed; ``stderr`` holds what it said."""

    def __init__(self, argv: Sequence[str], stderr: str) -> None:
        self.argv = list(argv)
        self.stderr = stderr.strip()
        super().__init__(f"{argv[0]} failed: {self.stderr or 'no message'}")


class SlurmUnreachable(SlurmError):
    """The controller (or slurmdbd) did not answer: transient, try again later."""


@dataclass(frozen=True)
class NodeInfo:
    """One node as ``sinfo -N`` sees it in one partition."""

    name: str
    partition: str
    gpu_type: str
    gpus: int
    state: str  # sinfo's long state, e.g. "idle", "allocated", "drained", "down*"
    gpus_used: int = 0

    @property
    def healthy(self) -> bool:
        """False for a node that is drained, draining, down, failing or not responding."""
        state = self.state.lower()
        return not any(
            word in state for word in ("drain", "down", "fail", "maint", "unknown", "*", "inval")
        )


@dataclass(frozen=True)
class JobInfo:
    """A job as ``squeue``/``sacct`` report it."""

    job_id: str
    name: str
    user: str
    state: str  # Slurm's base state, e.g. PENDING, RUNNING, COMPLETED, TIMEOUT, NODE_FAIL
    reason: str = ""
    start: datetime | None = None
    end: datetime | None = None
    elapsed_seconds: float = 0.0
    gpus: int = 0
    exit_code: str = ""
    reservation: str = ""


def parse_gres(text: str) -> tuple[str, int]:
    """``gpu:a100:8(S:0-1),shard:2`` -> ``("a100", 8)``; ``("", 0)`` without GPUs."""
    for item in re.split(r",(?![^()]*\))", text or ""):
        item = re.sub(r"\(.*\)$", "", item.strip())
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        count = parts[-1]
        if not count.isdigit():
            continue
        return (parts[1] if len(parts) == 3 else "", int(count))
    return ("", 0)


def parse_tres_gpus(text: str) -> int:
    """The GPU count in a TRES string: ``cpu=1,gres/gpu=4,node=1`` -> 4."""
    total = 0
    for item in (text or "").split(","):
        key, _, value = item.partition("=")
        if key == "gres/gpu" and value.isdigit():
            total = int(value)
    return total


def parse_key_values(line: str) -> dict[str, str]:
    """One ``scontrol show ... -o`` line as a dict (values may hold spaces: OS=...)."""
    found: dict[str, str] = {}
    for match in re.finditer(r"(\w[\w/:.]*)=(.*?)(?=\s+\w[\w/:.]*=|$)", line.strip()):
        found[match.group(1)] = match.group(2).strip()
    return found


def parse_time(text: str) -> datetime | None:
    """Slurm's local ISO time (``2026-11-30T09:49:03``); None for Unknown/None/N/A."""
    text = (text or "").strip()
    if not text or text in ("Unknown", "None", "N/A", "(null)"):
        return None
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None


def slurm_time(moment: datetime) -> str:
    """A Slurm time argument (the controller's local time, whole seconds)."""
    return moment.astimezone().replace(tzinfo=None, microsecond=0).isoformat()


class SlurmCLI:
    """Runs Slurm client commands with a fixed environment (``SLURM_CONF``) and timeout."""

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        bin_dir: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.bin_dir = bin_dir
        self.timeout = timeout

    def run(self, *argv: str, stdin: str | None = None, timeout: float | None = None) -> str:
        """Run one command; its stdout. SlurmUnreachable when the controller does not answer,
        SlurmError for any other failure."""
        command = [os.path.join(self.bin_dir, argv[0]) if self.bin_dir else argv[0], *argv[1:]]
        try:
            completed = subprocess.run(
                command,
                input=stdin,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout or self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            limit = timeout or self.timeout
            raise SlurmUnreachable(argv, f"no answer within {limit:.0f} s") from exc
        except OSError as exc:
            raise SlurmError(argv, f"cannot run {command[0]}: {exc.strerror}") from exc
        if completed.returncode != 0:
            stderr = completed.stderr or completed.stdout
            error = SlurmUnreachable if any(s in stderr for s in _UNREACHABLE) else SlurmError
            raise error(argv, stderr)
        return completed.stdout

    # --- inventory ------------------------------------------------------------------------------

    def nodes(self) -> list[NodeInfo]:
        """Every node of every partition, with its GPUs and how many are allocated."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N|%R|%G|%T")
        used = self._gpus_used()
        nodes = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 4:
                continue
            name, partition, gres, state = parts
            gpu_type, gpus = parse_gres(gres)
            nodes.append(
                NodeInfo(
                    name=name,
                    partition=partition,
                    gpu_type=gpu_type,
                    gpus=gpus,
                    state=state,
                    gpus_used=used.get(name, 0),
                )
            )
        return nodes

    def _gpus_used(self) -> dict[str, int]:
        used = {}
        for line in self.run("scontrol", "show", "node", "-o").splitlines():
            values = parse_key_values(line)
            if "NodeName" in values:
                used[values["NodeName"]] = parse_tres_gpus(values.get("AllocTRES", ""))
        return used

    # --- reservations ---------------------------------------------------------------------------

    def reservation(self, name: str) -> dict[str, str] | None:
        """``scontrol show reservation NAME`` as a dict, or None if there is none."""
        try:
            out = self.run("scontrol", "show", "reservation", name, "-o")
        except SlurmError as exc:
            if isinstance(exc, SlurmUnreachable):
                raise
            if "not found" in exc.stderr:
                return None
            raise
        for line in out.splitlines():
            values = parse_key_values(line)
            if values.get("ReservationName") == name:
                return values
        return None

    def reservations(self) -> list[dict[str, str]]:
        """Every reservation on the cluster."""
        out = self.run("scontrol", "show", "reservation", "-o")
        return [parse_key_values(line) for line in out.splitlines() if "ReservationName=" in line]

    def create_reservation(
        self,
        *,
        name: str,
        user: str,
        partition: str,
        nodes: int,
        start: datetime | None,
        end: datetime,
    ) -> None:
        """Reserve ``nodes`` whole nodes of ``partition`` from ``start`` (None: now) to ``end``
        for ``user`` only."""
        self.run(
            "scontrol",
            "create",
            "reservation",
            f"ReservationName={name}",
            f"Users={user}",
            f"PartitionName={partition}",
            f"NodeCnt={nodes}",
            f"StartTime={'now' if start is None else slurm_time(start)}",
            f"EndTime={slurm_time(end)}",
        )

    def delete_reservation(self, name: str) -> None:
        self.run("scontrol", "delete", f"ReservationName={name}")

    # --- jobs -----------------------------------------------------------------------------------

    def submit(self, script: str, args: Sequence[str]) -> str:
        """``sbatch --parsable ARGS`` with the script on stdin; the job id."""
        out = self.run("sbatch", "--parsable", *args, stdin=script)
        return out.strip().split(";")[0]

    def queue(self, *, user: str) -> list[JobInfo]:
        """The user's jobs the controller still holds (any state, recent ones included)."""
        out = self.run("squeue", "-h", "-t", "all", "-u", user, "-o", "%i|%j|%u|%T|%r|%S|%e|%v")
        jobs = []
        for line in out.splitlines():
            parts = line.strip().split("|")
            if len(parts) != 8:
                continue
            job_id, name, owner, state, reason, start, end, reservation = parts
            jobs.append(
                JobInfo(
                    job_id=job_id,
                    name=name,
                    user=owner,
                    state=state.split()[0],
                    reason=reason if reason != "None" else "",
                    start=parse_time(start),
                    end=parse_time(end),
                    reservation=reservation if reservation != "(null)" else "",
                )
            )
        return jobs

    def accounting(
        self, *, user: str, since: datetime, job_ids: Sequence[str] = ()
    ) -> list[JobInfo]:
        """Finished and running jobs of ``user`` from ``sacct`` (needs slurmdbd)."""
        args = [
            "sacct",
            "-n",
            "-P",
            "-X",
            "-u",
            user,
            "-S",
            slurm_time(since),
            "-o",
            "JobID,JobName,User,State,Start,End,ElapsedRaw,AllocTRES,ExitCode,Reservation",
        ]
        if job_ids:
            args += ["-j", ",".join(job_ids)]
        jobs = []
        for line in self.run(*args).splitlines():
            parts = line.strip().split("|")
            if len(parts) != 10:
                continue
            job_id, name, owner, state, start, end, elapsed, tres, exit_code, reservation = parts
            jobs.append(
                JobInfo(
                    job_id=job_id,
                    name=name,
                    user=owner,
                    state=state.split()[0],
                    start=parse_time(start),
                    end=parse_time(end),
                    elapsed_seconds=float(elapsed) if elapsed.isdigit() else 0.0,
                    gpus=parse_tres_gpus(tres),
                    exit_code=exit_code,
                    reservation=reservation,
                )
            )
        return jobs

    def cancel(self, job_id: str) -> None:
        self.run("scancel", "--quiet", job_id)
