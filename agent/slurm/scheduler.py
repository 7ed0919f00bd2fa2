"""The Slurm scheduler backend: the agent's pools, holds and workloads are Slurm's.

- **Inventory**: each partition's nodes with GPU GRES (``gpu:a100:8``) are one pool per GPU
  type (key: the partition, or ``partition-type`` when a partition mixes types); a background
  poller reads ``sinfo``/``scontrol show node`` every ``poll_seconds``, so a drained or down
  node leaves the pool's healthy accelerators in the next heartbeat.
- **Holds**: ``HoldCapacity`` makes an advance reservation ``<prefix><hold id>`` for the
  service account alone, of whole nodes: Slurm 22.05 cannot reserve a number of GPUs, so a
  booking of *k* accelerators holds ``ceil(k / GPUs per node)`` nodes. ``ReleaseCapacity``
  deletes it (after cancelling the agent's own job in it); Slurm drops it at its end.
- **Workloads**: ``StartWorkload`` submits ``sbatch --reservation=<prefix><id>`` (making the
  reservation for now .. now + duration first when the broker held none), with ``--gpus``,
  whole nodes and a time limit that ends with the reservation; Slurm's job states map to the
  workload's, and a finished job's accelerator-hours come from ``sacct`` (allocated GPUs x
  elapsed time).
- **What it never does**: touch a reservation or a job it did not create. Its own are those
  named with its prefix *and* belonging to its service account; every cancel and delete checks
  both first.

The controller may be away (restarting, failing over): commands then fail after ~9 s with
``SlurmUnreachable``. The poller keeps the last known states and picks up again when the
controller is back; calls that must change something answer UNAVAILABLE meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.config import DECLARED_TFLOPS, AgentConfig, PoolConfig
from agent.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from agent.slurm.cli import JobInfo, NodeInfo, SlurmCLI, SlurmError, SlurmUnreachable
from agent.slurm.config import SlurmConfig
from agent.workloads import (
    HOLD_ID_RE,
    TERMINAL_STATES,
    WATCH_POLL_SECONDS,
    CapacityHold,
    Workload,
    WorkloadRunner,
    WorkloadSpec,
    WorkloadState,
    check_hold,
)

logger = logging.getLogger(__name__)

# Slurm's job states (base names) -> the workload's, with the event message.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset(
    {"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED"}
)
ENDED: dict[str, tuple[WorkloadState, str]] = {
    "COMPLETED": (WorkloadState.SUCCEEDED, "completed"),
    "FAILED": (WorkloadState.FAILED, "failed: the job exited with an error"),
    "OUT_OF_MEMORY": (WorkloadState.FAILED, "failed: out of memory"),
    "TIMEOUT": (WorkloadState.FAILED, "timeout: the booked window ended first"),
    "DEADLINE": (WorkloadState.FAILED, "timeout: the booked window ended first"),
    "NODE_FAIL": (WorkloadState.FAILED, "node failure"),
    "BOOT_FAIL": (WorkloadState.FAILED, "node failure: a node did not boot"),
    "PREEMPTED": (WorkloadState.FAILED, "preempted by the center"),
    "CANCELLED": (WorkloadState.FAILED, "cancelled in Slurm by the center"),
}
# A submitted job Slurm no longer knows (e.g. lost in a controller crash) fails after this long.
LOST_AFTER_SECONDS = 120.0


@dataclass
class _Tracked:
    """A workload of this agent: its spec, Slurm job id and the last snapshot."""

    workload: Workload
    job_id: str
    submitted: float  # monotonic
    stopping: bool = False
    reservation_end: datetime | None = None


@dataclass(frozen=True)
class SlurmPool:
    """A pool and the nodes behind it."""

    config: PoolConfig
    partition: str
    gpu_type: str


class SlurmScheduler(WorkloadRunner):
    """The agent's workload runner, capacity holder and inventory, all through Slurm."""

    def __init__(
        self,
        config: SlurmConfig,
        *,
        pool_template: PoolConfig | None = None,
        configured: tuple[PoolConfig, ...] = (),
        cli: SlurmCLI | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.slurm = config
        env = None
        if config.conf:
            import os

            env = {**os.environ, "SLURM_CONF": config.conf}
        self.cli = cli or SlurmCLI(env=env, bin_dir=config.bin_dir, timeout=config.command_timeout)
        self.nodes: list[NodeInfo] = self.cli.nodes()  # fails loudly if Slurm is not there
        self.pools_by_key = self._discover(pool_template, configured)
        super().__init__([p.config for p in self.pools_by_key.values()], clock=clock)
        self._tracked: dict[str, _Tracked] = {}
        self._pending_deletes: set[str] = set()
        self._ids_lock = threading.Lock()
        self._id_locks: dict[str, threading.Lock] = {}
        self.reachable = True
        self.polls = 0
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="slurm-poller", daemon=True)
        self._poller.start()

    # --- inventory ------------------------------------------------------------------------------

    def _discover(
        self, template: PoolConfig | None, configured: tuple[PoolConfig, ...]
    ) -> dict[str, SlurmPool]:
        groups: dict[tuple[str, str], list[NodeInfo]] = {}
        for node in self.nodes:
            if node.gpus <= 0:
                continue
            if self.slurm.partitions and node.partition not in self.slurm.partitions:
                continue
            groups.setdefault((node.partition, node.gpu_type), []).append(node)
        types_per_partition: dict[str, int] = {}
        for partition, _ in groups:
            types_per_partition[partition] = types_per_partition.get(partition, 0) + 1
        by_key = {pool.key: pool for pool in configured}
        models = self.slurm.model_map
        pools: dict[str, SlurmPool] = {}
        for (partition, gpu_type), nodes in sorted(groups.items()):
            key = partition if types_per_partition[partition] == 1 else f"{partition}-{gpu_type}"
            model = models.get(gpu_type, gpu_type or "gpu")
            base = by_key.get(key) or template
            declared = (
                base.declared_tflops_per_accelerator if base else 0.0
            ) or DECLARED_TFLOPS.get(model, 0.0)
            pool = PoolConfig(
                key=key,
                accelerator_model=model,
                accelerators_per_node=min(n.gpus for n in nodes),
                nodes=len(nodes),
                intra_node_interconnect=base.intra_node_interconnect if base else "",
                inter_node_interconnect=base.inter_node_interconnect if base else "",
                declared_tflops_per_accelerator=declared,
                declared_precision=base.declared_precision if base else "bf16",
                name=(by_key[key].name if key in by_key else ""),
                price_per_accelerator_hour=(
                    by_key[key].price_per_accelerator_hour if key in by_key else None
                ),
                traits=(by_key[key].traits if key in by_key else ()),
                national_id=(by_key[key].national_id if key in by_key else ""),
            )
            pools[key] = SlurmPool(config=pool, partition=partition, gpu_type=gpu_type)
        if not pools:
            raise SlurmError(["sinfo"], "no partition with GPU GRES (gpu:TYPE:N) to front")
        return pools

    def agent_config(self, config: AgentConfig) -> AgentConfig:
        """``config`` with the pools Slurm has (replacing configured ones)."""
        return replace(config, pools=tuple(p.config for p in self.pools_by_key.values()))

    def _pool_nodes(self, key: str) -> list[NodeInfo]:
        pool = self.pools_by_key[key]
        return [
            n
            for n in self.nodes
            if n.partition == pool.partition and n.gpu_type == pool.gpu_type and n.gpus > 0
        ]

    def healthy(self, pool_key: str) -> int:
        """GPUs on the pool's nodes that are up and not drained (as of the last poll)."""
        return sum(n.gpus for n in self._pool_nodes(pool_key) if n.healthy)

    def busy(self, pool_key: str) -> int:
        """GPUs allocated to jobs on the pool's healthy nodes, anyone's (the live load)."""
        return sum(min(n.gpus_used, n.gpus) for n in self._pool_nodes(pool_key) if n.healthy)

    def device_details(self, pool_key: str) -> tuple[str, ...]:
        """One line per node: what Slurm says it has and its state."""
        return tuple(
            f"slurm {n.name} ({n.partition}): gpu:{n.gpu_type}:{n.gpus}, {n.state}"
            for n in self._pool_nodes(pool_key)
        )

    # --- holds ----------------------------------------------------------------------------------

    def reservation_name(self, hold_id: str) -> str:
        return f"{self.slurm.prefix}{hold_id}"

    def _owned(self, values: dict[str, str] | None) -> bool:
        """A reservation is the agent's when its name has the prefix and its only user is the
        agent's service account."""
        if not values:
            return False
        users = values.get("Users", "").split(",")
        return values.get("ReservationName", "").startswith(self.slurm.prefix) and users == [
            self.slurm.user
        ]

    def _lock_for(self, key: str) -> threading.Lock:
        with self._ids_lock:
            return self._id_locks.setdefault(key, threading.Lock())

    def hold(self, hold: CapacityHold) -> tuple[CapacityHold, bool]:
        """Make (or find) the advance reservation of whole nodes for the window."""
        pool = self.resolve_pool(hold.pool_key)
        now = self._clock()
        hold = replace(hold, pool_key=pool.key, start=max(hold.start, now))
        check_hold(hold, pool, now)
        with self._lock_for(hold.hold_id):
            return self._hold_locked(hold, pool)

    def _hold_locked(self, hold: CapacityHold, pool: PoolConfig) -> tuple[CapacityHold, bool]:
        name = self.reservation_name(hold.hold_id)
        slurm_pool = self.pools_by_key[pool.key]
        nodes = math.ceil(hold.accelerators / pool.accelerators_per_node)
        try:
            existing = self.cli.reservation(name)
            if existing is not None:
                if not self._owned(existing):
                    raise FailedPrecondition(
                        f"a Slurm reservation named {name} exists and is not this agent's; "
                        "it is left alone"
                    )
                return self._hold_from(existing, hold), False
            usable = sum(1 for n in self._pool_nodes(pool.key) if n.healthy)
            if nodes > usable:
                raise ResourceExhausted(
                    f"{hold.accelerators} accelerators need {nodes} whole nodes; "
                    f"{usable} of the pool's nodes are usable"
                )
            now = self._clock()
            start = None if hold.start <= now + timedelta(seconds=5) else hold.start
            self.cli.create_reservation(
                name=name,
                user=self.slurm.user,
                partition=slurm_pool.partition,
                nodes=nodes,
                start=start,
                end=hold.end,
            )
            made = self.cli.reservation(name)
        except SlurmUnreachable as exc:
            raise Unavailable(f"Slurm is not answering: {exc.stderr}") from exc
        except SlurmError as exc:
            raise ResourceExhausted(f"Slurm cannot reserve {nodes} nodes: {exc.stderr}") from exc
        if made is None or int(made.get("NodeCnt", "0") or 0) < nodes:
            # Slurm may give fewer nodes than asked: that is not a hold of what was booked.
            with contextlib.suppress(SlurmError):
                self.cli.delete_reservation(name)
            raise ResourceExhausted(f"Slurm reserved fewer than {nodes} nodes for the window")
        logger.info("hold %s: reservation %s on %s", hold.hold_id, name, made.get("Nodes"))
        return self._hold_from(made, hold), True

    def _hold_from(self, values: dict[str, str], hold: CapacityHold) -> CapacityHold:
        from agent.slurm.cli import parse_time

        return replace(
            hold,
            nodes=int(values.get("NodeCnt", "0") or 0),
            start=parse_time(values.get("StartTime", "")) or hold.start,
            end=parse_time(values.get("EndTime", "")) or hold.end,
            reference=values.get("ReservationName", ""),
        )

    def release(self, hold_id: str, reason: str = "") -> bool:
        """Delete the agent's reservation for ``hold_id`` (cancelling its own job in it first);
        False if there is none, or it is not the agent's (then it is left alone).

        A reservation Slurm will not delete yet (its job still ending) or cannot be asked about
        (controller away) is remembered: the poller deletes it as soon as it can, so a released
        booking never keeps the center's nodes until its window ends."""
        if not HOLD_ID_RE.match(hold_id):
            raise InvalidArgument("hold_id", "1 to 100 letters, digits, '-', '_' or '.'")
        with self._lock_for(hold_id):
            try:
                done = self._delete_own(hold_id, attempts=4)
            except SlurmUnreachable as exc:
                with self._cond:
                    self._pending_deletes.add(hold_id)
                raise Unavailable(
                    f"Slurm is not answering ({exc.stderr}); the reservation is deleted once "
                    "it answers"
                ) from exc
        if done is None:
            return False
        if not done:
            with self._cond:
                self._pending_deletes.add(hold_id)
            logger.info("hold %s released (%s): deleted once its job has ended", hold_id, reason)
            return True
        logger.info("hold %s released (%s)", hold_id, reason)
        return True

    def _delete_own(self, hold_id: str, *, attempts: int) -> bool | None:
        """Delete the reservation if it is the agent's: True when deleted, False when Slurm
        refused for now, None when there is none of the agent's (nothing to do)."""
        name = self.reservation_name(hold_id)
        existing = self.cli.reservation(name)
        if existing is None:
            return None
        if not self._owned(existing):
            logger.warning("reservation %s is not this agent's: left alone", name)
            return None
        with self._cond:
            tracked = self._tracked.get(hold_id)
        if tracked is not None:
            self._cancel_own(tracked.job_id, name)
        for attempt in range(attempts):
            try:
                self.cli.delete_reservation(name)
                return True
            except SlurmUnreachable:
                raise
            except SlurmError as exc:
                logger.info("reservation %s not deleted yet: %s", name, exc.stderr)
                if attempt < attempts - 1:
                    time.sleep(0.5)  # its job is still ending
        return False

    def _retry_deletes(self) -> None:
        with self._cond:
            pending = sorted(self._pending_deletes)
        for hold_id in pending:
            with self._lock_for(hold_id):
                if self._delete_own(hold_id, attempts=1) is not False:
                    with self._cond:
                        self._pending_deletes.discard(hold_id)

    # --- workloads ------------------------------------------------------------------------------

    def start(self, spec: WorkloadSpec) -> tuple[Workload, bool]:
        """Submit the workload as a Slurm job in its reservation; idempotent per id."""
        if not HOLD_ID_RE.match(spec.workload_id):
            # It names a Slurm job and reservation: nothing that scontrol could read as more.
            raise InvalidArgument("workload_id", "1 to 100 letters, digits, '-', '_' or '.'")
        with self._cond:
            tracked = self._tracked.get(spec.workload_id)
            if tracked is not None:
                return tracked.workload, False
        pool = self.resolve_pool(spec.pool_key)
        if not 1 <= spec.accelerators <= pool.accelerators:
            raise InvalidArgument("accelerators", f"must be between 1 and {pool.accelerators}")
        if spec.duration_seconds <= 0:
            raise InvalidArgument("duration_seconds", "must be > 0 (it is the job's time limit)")
        spec = replace(spec, pool_key=pool.key)
        with self._lock_for(spec.workload_id):
            with self._cond:
                tracked = self._tracked.get(spec.workload_id)
                if tracked is not None:
                    return tracked.workload, False
            adopted = self._adopt(spec)
            if adopted is not None:
                return adopted, False
            return self._submit(spec, pool), True

    def _adopt(self, spec: WorkloadSpec) -> Workload | None:
        """A job of this id that the agent submitted before (an agent that restarted lost its
        memory, Slurm did not): follow it instead of submitting a second one. Only a job with
        the agent's name *and* user is adopted."""
        name = self.reservation_name(spec.workload_id)
        try:
            jobs = [j for j in self.cli.queue(user=self.slurm.user) if j.name == name]
            if not jobs and self.slurm.accounting:
                since = self._clock() - timedelta(days=7)
                jobs = [
                    j
                    for j in self.cli.accounting(user=self.slurm.user, since=since)
                    if j.name == name
                ]
        except SlurmUnreachable as exc:
            raise Unavailable(f"Slurm is not answering: {exc.stderr}") from exc
        jobs = [j for j in jobs if j.user == self.slurm.user]
        if not jobs:
            return None
        job = jobs[-1]
        if not spec.accelerators:
            spec = replace(spec, accelerators=job.gpus)
        workload = Workload(
            spec=spec,
            state=WorkloadState.PENDING,
            created_at=self._clock(),
            message=f"Slurm job {job.job_id} found again",
        )
        with self._cond:
            self._tracked[spec.workload_id] = _Tracked(workload, job.job_id, time.monotonic())
        self._refresh_jobs()
        return self._snapshot(spec.workload_id)

    def _submit(self, spec: WorkloadSpec, pool: PoolConfig) -> Workload:
        name = self.reservation_name(spec.workload_id)
        now = self._clock()
        hold = CapacityHold(
            hold_id=spec.workload_id,
            pool_key=pool.key,
            accelerators=spec.accelerators,
            start=now,
            end=now + timedelta(seconds=spec.duration_seconds),
        )
        made, _ = self._hold_locked(hold, pool)  # the broker's hold, or one for now .. duration
        minutes = max(1, math.ceil((made.end - self._clock()).total_seconds() / 60))
        workdir = Path(self.slurm.workdir)
        script = self._script(spec)
        args = [
            f"--job-name={name}",
            f"--reservation={name}",
            f"--partition={self.pools_by_key[pool.key].partition}",
            f"--nodes={made.nodes or 1}",
            f"--gpus={spec.accelerators}",
            f"--time={minutes}",
            f"--chdir={workdir}",
            f"--output={workdir / (name + '.out')}",
            f"--comment=interconnect workload {spec.workload_id}",
        ]
        try:
            job_id = self.cli.submit(script, args)
        except SlurmUnreachable as exc:
            raise Unavailable(f"Slurm is not answering: {exc.stderr}") from exc
        except SlurmError as exc:
            raise FailedPrecondition(f"Slurm refused the job: {exc.stderr}") from exc
        logger.info("workload %s: Slurm job %s in reservation %s", spec.workload_id, job_id, name)
        workload = Workload(
            spec=spec,
            state=WorkloadState.PENDING,
            created_at=now,
            message=f"Slurm job {job_id} submitted",
            scheduler_state="PENDING",
        )
        with self._cond:
            self._tracked[spec.workload_id] = _Tracked(
                workload, job_id, time.monotonic(), reservation_end=made.end
            )
            self._cond.notify_all()
        return workload

    def _script(self, spec: WorkloadSpec) -> str:
        command = spec.command or "true"
        if self.slurm.container and spec.image:
            runtime = self.slurm.container.format(image=shlex.quote(spec.image))
            command = f"{runtime} sh -c {shlex.quote(command)}"
        return (
            "#!/bin/sh\n"
            f"# interconnect workload {spec.workload_id}\n"
            f"export INTERCONNECT_WORKLOAD_ID={shlex.quote(spec.workload_id)}\n"
            f"export INTERCONNECT_IMAGE={shlex.quote(spec.image)}\n"
            f"{command}\n"
        )

    def _snapshot(self, workload_id: str) -> Workload:
        with self._cond:
            tracked = self._tracked.get(workload_id)
            if tracked is None:
                raise NotFound(f"no workload {workload_id!r} on this agent")
            return tracked.workload

    def get(self, workload_id: str) -> Workload:
        """The workload's last known state; one this agent started before a restart is found
        again in Slurm (by its name and the service account)."""
        with self._cond:
            tracked = self._tracked.get(workload_id)
            if tracked is not None:
                return tracked.workload
        if not HOLD_ID_RE.match(workload_id):
            raise NotFound(f"no workload {workload_id!r} on this agent")
        with self._lock_for(workload_id):
            with self._cond:
                tracked = self._tracked.get(workload_id)
                if tracked is not None:
                    return tracked.workload
            pool = next(iter(self.pools_by_key))
            adopted = self._adopt(
                WorkloadSpec(workload_id=workload_id, pool_key=pool, accelerators=0)
            )
        if adopted is None:
            raise NotFound(f"no workload {workload_id!r} on this agent")
        return adopted

    def get_job_id(self, workload_id: str) -> str:
        """The Slurm job id of a workload of this agent."""
        with self._cond:
            tracked = self._tracked.get(workload_id)
            if tracked is None:
                raise NotFound(f"no workload {workload_id!r} on this agent")
            return tracked.job_id

    def stop(self, workload_id: str, reason: str = "", grace_seconds: float = 0.0) -> Workload:
        """Cancel the workload's job; with ``grace_seconds`` a running job is cancelled that
        much later (a preempted booking saves its state meanwhile)."""
        if grace_seconds < 0 or grace_seconds != grace_seconds:
            raise InvalidArgument("grace_seconds", "must be >= 0")
        with self._cond:
            tracked = self._tracked.get(workload_id)
            if tracked is None:
                raise NotFound(f"no workload {workload_id!r} on this agent")
            if tracked.workload.state in TERMINAL_STATES:
                return tracked.workload
            if grace_seconds > 0 and tracked.workload.state is WorkloadState.RUNNING:
                timer = threading.Timer(
                    grace_seconds, self.stop, args=(workload_id, f"{reason} (after a grace period)")
                )
                timer.daemon = True
                timer.start()
                return tracked.workload
            tracked.stopping = True
        try:
            self._cancel_own(tracked.job_id, self.reservation_name(workload_id))
        except SlurmUnreachable as exc:
            raise Unavailable(f"Slurm is not answering: {exc.stderr}") from exc
        with self._cond:
            return self._set(tracked, WorkloadState.STOPPED, reason or "stopped", "CANCELLED")

    def _cancel_own(self, job_id: str, name: str) -> None:
        """``scancel`` a job, only after checking it is the agent's (its name and user)."""
        for job in self.cli.queue(user=self.slurm.user):
            if job.job_id == job_id:
                if job.name != name or job.user != self.slurm.user:
                    logger.warning("job %s is not this agent's: left alone", job_id)
                    return
                if job.state in PENDING_STATES or job.state in RUNNING_STATES:
                    self.cli.cancel(job_id)
                return

    def watch(self, workload_id: str, is_active: Callable[[], bool]) -> Iterator[Workload]:
        seen = -1
        while True:
            if seen == -1:
                self.get(workload_id)  # NotFound, or found again in Slurm
            with self._cond:
                workload = self._snapshot(workload_id)
                while workload.version == seen:
                    self._cond.wait(WATCH_POLL_SECONDS)
                    if not is_active() or self._closed:
                        return
                    workload = self._snapshot(workload_id)
            seen = workload.version
            yield workload
            if workload.state in TERMINAL_STATES:
                return

    def close(self) -> None:
        self._stop.set()
        super().close()

    # --- following Slurm ------------------------------------------------------------------------

    def _set(
        self,
        tracked: _Tracked,
        state: WorkloadState,
        message: str,
        slurm_state: str,
        *,
        started: datetime | None = None,
        finished: datetime | None = None,
        hours: float = 0.0,
    ) -> Workload:
        """Move a tracked workload (call with the lock held); a terminal one never moves."""
        old = tracked.workload
        if old.state in TERMINAL_STATES:
            return old
        new = replace(
            old,
            state=state,
            message=message,
            scheduler_state=slurm_state,
            started_at=started or old.started_at,
            finished_at=finished if state in TERMINAL_STATES else None,
            accelerator_hours=hours,
        )
        if (new.state, new.message, new.started_at, new.scheduler_state) != (
            old.state,
            old.message,
            old.started_at,
            old.scheduler_state,
        ) or state in TERMINAL_STATES:
            new = replace(new, version=old.version + 1)
            tracked.workload = new
            self._cond.notify_all()
        return tracked.workload

    def poll(self) -> None:
        """One refresh of nodes and of the agent's jobs (the poller calls it)."""
        try:
            self.nodes = self.cli.nodes()
            self._refresh_jobs()
            self._retry_deletes()
        except SlurmUnreachable as exc:
            if self.reachable:
                logger.warning("Slurm is not answering (%s); keeping the last known state", exc)
            self.reachable = False
            return
        except SlurmError as exc:
            logger.warning("Slurm poll failed: %s", exc)
            return
        if not self.reachable:
            logger.info("Slurm answers again")
        self.reachable = True
        self.polls += 1

    def _refresh_jobs(self) -> None:
        with self._cond:
            active = {
                t.job_id: t
                for t in self._tracked.values()
                if t.workload.state not in TERMINAL_STATES
            }
        if not active:
            return
        queue = {j.job_id: j for j in self.cli.queue(user=self.slurm.user) if j.job_id in active}
        ended = [
            job_id
            for job_id in active
            if job_id not in queue or queue[job_id].state not in PENDING_STATES | RUNNING_STATES
        ]
        accounted: dict[str, JobInfo] = {}
        if ended and self.slurm.accounting:
            since = min(active[j].workload.created_at for j in ended) - timedelta(hours=1)
            for job in self.cli.accounting(user=self.slurm.user, since=since, job_ids=ended):
                accounted[job.job_id] = job
        with self._cond:
            for job_id, tracked in active.items():
                self._apply(tracked, queue.get(job_id), accounted.get(job_id))

    def _apply(self, tracked: _Tracked, queued: JobInfo | None, accounted: JobInfo | None) -> None:
        job = queued
        if job is not None and job.state in PENDING_STATES:
            reason = f" ({job.reason})" if job.reason else ""
            self._set(tracked, WorkloadState.PENDING, f"pending in Slurm{reason}", job.state)
            return
        if job is not None and job.state in RUNNING_STATES:
            self._set(tracked, WorkloadState.RUNNING, "running", job.state, started=job.start)
            return
        # Ended (or gone from the queue): the accounting record, when there is accounting.
        final = accounted if self.slurm.accounting else job
        if final is None or final.state in PENDING_STATES | RUNNING_STATES:
            if (
                job is None
                and accounted is None
                and (time.monotonic() - tracked.submitted > LOST_AFTER_SECONDS)
            ):
                self._set(
                    tracked,
                    WorkloadState.FAILED,
                    "the job is gone from Slurm (lost by the controller)",
                    "UNKNOWN",
                    finished=self._clock(),
                )
            return  # accounting lags the controller by a moment: next poll
        state, message = ENDED.get(final.state, (WorkloadState.FAILED, final.state.lower()))
        if final.state == "CANCELLED" and tracked.stopping:
            state, message = WorkloadState.STOPPED, "stopped"
        if final.state == "FAILED" and final.exit_code:
            message = f"failed: the job exited with {final.exit_code.split(':')[0]}"
        hours = 0.0
        if accounted is not None and accounted.start is not None:
            hours = accounted.gpus * accounted.elapsed_seconds / 3600
        self._set(
            tracked,
            state,
            message,
            final.state,
            started=final.start,
            finished=final.end or self._clock(),
            hours=hours,
        )

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.slurm.poll_seconds):
            try:
                self.poll()
            except Exception:  # the poller must outlive any one bad answer
                logger.exception("Slurm poll crashed")
