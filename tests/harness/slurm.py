"""A whole Slurm 22.05 cluster on one machine, in a temporary directory, on free ports.

What it starts (each a foreground process in its own session, logs under the directory):

- ``munged`` on a private socket (its directory mode 755, a key made by ``mungekey``);
- a private MariaDB (``mariadbd``) on its own port, and ``slurmdbd`` on it, so ``sacct`` works;
- ``slurmctld``, and one ``slurmd -N nodeN`` per node, every node ``localhost`` on its own port,
  each with ``gpus_per_node`` fake GPUs (``gres.conf`` with ``AutoDetect=off`` and character
  devices made by ``mknod``: Slurm refuses plain files).

Needs root (``mknod``, ``slurmd``) and Debian's ``munge slurmctld slurmd slurm-client
slurmdbd`` (``.ci/ensure-services.sh`` installs them) plus ``mariadb-server``.
:func:`missing` says what is absent, for a skip with a reason. Clients need ``SLURM_CONF``:
:attr:`SlurmCluster.env`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.harness.procs import free_port, pid_alive, port_open, wait_until

BINARIES = (
    "munged",
    "mungekey",
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "sinfo",
    "scontrol",
    "sbatch",
    "sacct",
    "sacctmgr",
    "mariadbd",
    "mariadb-install-db",
)
SBIN_PATHS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def which(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories (not on every root's PATH)."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_PATHS))


def missing() -> str:
    """Why a cluster cannot start here ("" when it can)."""
    if os.geteuid() != 0:
        return "a Slurm test cluster needs root (slurmd, mknod)"
    absent = [name for name in BINARIES if which(name) is None]
    if absent:
        return "Slurm is not installed (missing " + ", ".join(absent) + "): .ci/ensure-services.sh"
    return ""


class SlurmCluster:
    """One private cluster. ``start()``, ``stop()``; ``kill_controller``/``start_controller``
    for fault tests; ``run(...)`` runs a client command against it."""

    def __init__(
        self,
        *,
        nodes: int = 2,
        gpus_per_node: int = 8,
        gpu_type: str = "a100",
        partition: str = "gpu",
        cpus_per_node: int = 4,
        accounting: bool = True,
        base_dir: Path | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ci-slurm-", dir=base_dir))
        os.chmod(self.root, 0o755)
        self.nodes = [f"node{i + 1}" for i in range(nodes)]
        self.gpus_per_node = gpus_per_node
        self.gpu_type = gpu_type
        self.partition = partition
        self.cpus_per_node = cpus_per_node
        self.accounting = accounting
        self.cluster_name = "ci" + self.root.name.rsplit("-", 1)[-1].lower()[:6]
        self.ctld_port = free_port()
        self.dbd_port = free_port()
        self.db_port = free_port()
        self.node_ports = {name: free_port() for name in self.nodes}
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket.2"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env["PATH"] = os.pathsep.join([self.env.get("PATH", ""), *SBIN_PATHS])
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- configuration -------------------------------------------------------------------------

    def _write_configs(self) -> None:
        root = self.root
        (root / "state").mkdir()
        (root / "dev").mkdir()
        for i in range(self.gpus_per_node):
            os.mknod(root / "dev" / f"nvidia{i}", 0o666 | 0o020000, os.makedev(1, 3))
        for name in self.nodes:
            (root / f"spool-{name}").mkdir()
        node_lines = "\n".join(
            f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={self.cpus_per_node} RealMemory=1000 Gres=gpu:{self.gpu_type}:"
            f"{self.gpus_per_node} State=UNKNOWN"
            for name, port in self.node_ports.items()
        )
        accounting = (
            f"AccountingStorageType=accounting_storage/slurmdbd\n"
            f"AccountingStorageHost=127.0.0.1\nAccountingStoragePort={self.dbd_port}\n"
            f"AccountingStoragePass={self.munge_socket}\nAccountingStorageTRES=gres/gpu\n"
            f"JobAcctGatherType=jobacct_gather/none\n"
            if self.accounting
            else f"JobCompType=jobcomp/filetxt\nJobCompLoc={root / 'jobcomp.txt'}\n"
        )
        self.conf.write_text(
            f"""ClusterName={self.cluster_name}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={min(self.node_ports.values())}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
GresTypes=gpu
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
KillWait=2
Waittime=0
{accounting}
{node_lines}
PartitionName={self.partition} Nodes={",".join(self.nodes)} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (root / "gres.conf").write_text(
            "AutoDetect=off\n"
            f"NodeName={','.join(self.nodes)} Name=gpu Type={self.gpu_type} "
            f"File={root / 'dev'}/nvidia[0-{self.gpus_per_node - 1}]\n"
        )
        if self.accounting:
            dbd = root / "slurmdbd.conf"
            dbd.write_text(
                f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.dbd_port}
SlurmUser=root
PidFile={root / "slurmdbd.pid"}
LogFile={root / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.db_port}
StorageUser=root
StorageLoc=slurm_acct
"""
            )
            os.chmod(dbd, 0o600)

    # --- processes -----------------------------------------------------------------------------

    def _spawn(self, key: str, *argv: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{key}.out", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            list(argv),
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._procs[key] = proc
        return proc

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run a client command (``sinfo``, ``scontrol``...) against this cluster."""
        return subprocess.run(
            list(argv),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=self.root,
        )

    def _start_munge(self) -> None:
        munge_dir = self.root / "munge"
        munge_dir.mkdir(mode=0o755)
        os.chmod(munge_dir, 0o755)
        key = munge_dir / "munge.key"
        subprocess.run(
            [str(which("mungekey")), "--create", f"--keyfile={key}"], check=True, timeout=30
        )
        os.chmod(key, 0o600)
        self._spawn(
            "munged",
            str(which("munged")),
            "--foreground",
            "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--log-file={munge_dir / 'munged.log'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        )
        wait_until(self.munge_socket.exists, timeout=10, what="munged's socket")

    def _start_database(self) -> None:
        data = self.root / "mysql"
        subprocess.run(
            [
                str(which("mariadb-install-db")),
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
            cwd=self.root,
        )
        self._spawn(
            "mariadbd",
            str(which("mariadbd")),
            "--no-defaults",
            f"--datadir={data}",
            f"--port={self.db_port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.root / 'mysql.sock'}",
            f"--pid-file={self.root / 'mysql.pid'}",
            "--user=root",
            "--skip-grant-tables",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=8M",
            "--skip-log-bin",
        )
        wait_until(lambda: port_open(self.db_port), timeout=30, what="MariaDB")

    def _start_dbd(self) -> None:
        self._spawn("slurmdbd", str(which("slurmdbd")), "-D")
        wait_until(lambda: port_open(self.dbd_port), timeout=30, what="slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", self.cluster_name, check=False)

    def start_controller(self) -> None:
        """Start ``slurmctld`` (again): it recovers jobs and reservations from its state files."""
        self._spawn("slurmctld", str(which("slurmctld")), "-D")
        wait_until(lambda: port_open(self.ctld_port), timeout=30, what="slurmctld")

    def kill_controller(self, sig: int = signal.SIGTERM) -> None:
        """Stop ``slurmctld`` with ``sig`` and wait until it is gone (SIGTERM saves its state;
        SIGKILL loses what changed in the last ~5 s)."""
        proc = self._procs.pop("slurmctld")
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        proc.wait(timeout=30)

    def _start_node(self, name: str) -> None:
        self._spawn(f"slurmd-{name}", str(which("slurmd")), "-D", "-N", name)

    def start(self) -> SlurmCluster:
        started = time.monotonic()
        try:
            self._write_configs()
            self._start_munge()
            if self.accounting:
                self._start_database()
                self._start_dbd()
            self.start_controller()
            for name in self.nodes:
                self._start_node(name)
            wait_until(self._all_idle, timeout=60, interval=0.2, what="idle nodes")
        except Exception as exc:
            logs = self.logs()
            self.stop()
            raise RuntimeError(f"the Slurm test cluster did not start: {exc}\n{logs}") from exc
        self.start_seconds = time.monotonic() - started
        return self

    def _all_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return all(states.get(name) == "idle" for name in self.nodes)

    def node_state(self, name: str) -> str:
        return self.run("sinfo", "-h", "-n", name, "-N", "-o", "%t").stdout.strip()

    def logs(self) -> str:
        """The tails of every log, for a failing test's output."""
        parts = []
        for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            with contextlib.suppress(OSError):
                parts.append(f"== {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every daemon this cluster started (by pid: job steps first, by their slurmd's
        spool), then remove the directory."""
        with contextlib.suppress(Exception):
            if "slurmctld" in self._procs:
                self.run("scancel", "--full", "--quiet", "-u", "root", check=False, timeout=15)
        # All at once (nothing here needs a clean shutdown: the directory goes next).
        procs = list(self._procs.values())
        self._procs.clear()
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._kill_steps()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_steps(self) -> None:
        """``slurmstepd`` processes left by this cluster's nodes (they name its spool)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                if b"slurmstepd" in cmdline and str(self.conf).encode() in environ:
                    pid = int(entry)
                    if pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)
