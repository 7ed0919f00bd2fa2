"""Booked workloads on the agent: an in-memory runner with one thread per workload.

A workload is what the platform dispatches for a booking: run an image with a command on some
accelerators of a pool for a duration. This runner simulates the run (a real agent would hand
it to the cluster's scheduler): PENDING until enough accelerators of the pool are free and a
short start-up delay has passed, RUNNING for ``duration_seconds * time_scale``, then SUCCEEDED
(or FAILED if the command is literally ``false``, so tests can exercise failures), or STOPPED
when StopWorkload is called first.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from agent.config import PoolConfig
from agent.errors import InvalidArgument, NotFound

# Watchers re-check whether their caller is still there at least this often (seconds).
WATCH_POLL_SECONDS = 0.5


class WorkloadState(StrEnum):
    """Lifecycle of a workload; mirrors the proto's WorkloadState."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL_STATES = frozenset({WorkloadState.SUCCEEDED, WorkloadState.FAILED, WorkloadState.STOPPED})


@dataclass(frozen=True)
class WorkloadSpec:
    """What the platform asks to run (see ``StartWorkloadRequest``)."""

    workload_id: str
    pool_key: str
    accelerators: int
    image: str = ""
    command: str = ""
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class Workload:
    """A snapshot of a workload; ``version`` grows by one at every change."""

    spec: WorkloadSpec
    state: WorkloadState
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str = ""
    version: int = 0
    # Measured by the scheduler's accounting (Slurm's sacct); 0 when there is none.
    accelerator_hours: float = 0.0
    scheduler_state: str = ""


@dataclass(frozen=True)
class CapacityHold:
    """Capacity held for a booked window (see ``HoldCapacityRequest``): in-process, a record;
    in Slurm, an advance reservation of ``nodes`` whole nodes named ``reference``."""

    hold_id: str
    pool_key: str
    accelerators: int
    start: datetime
    end: datetime
    nodes: int = 0
    reference: str = ""


HOLD_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def check_hold(hold: CapacityHold, pool: PoolConfig, now: datetime) -> None:
    """Validate a hold request against its pool (InvalidArgument naming the field)."""
    if not HOLD_ID_RE.match(hold.hold_id):
        raise InvalidArgument("hold_id", "1 to 100 letters, digits, '-', '_' or '.'")
    if not 1 <= hold.accelerators <= pool.accelerators:
        raise InvalidArgument("accelerators", f"must be between 1 and {pool.accelerators}")
    if hold.end <= hold.start:
        raise InvalidArgument("end_time", "must be after start_time")
    if hold.end <= now:
        raise InvalidArgument("end_time", "must be in the future")


class WorkloadRunner:
    """Runs workloads on the agent's pools and tracks how many accelerators each one keeps busy.

    One condition variable guards all state: transitions are rare and short, and a single lock
    makes the capacity check and the RUNNING transition atomic, so a pool is never
    oversubscribed on the agent either.
    """

    def __init__(
        self,
        pools: Sequence[PoolConfig],
        *,
        time_scale: float = 1.0,
        startup_seconds: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pools = {pool.key: pool for pool in pools}
        self._time_scale = time_scale
        self._startup_seconds = startup_seconds
        self._clock = clock
        self._cond = threading.Condition()
        self._workloads: dict[str, Workload] = {}
        self._busy = dict.fromkeys(self._pools, 0)
        self._closed = False
        self._holds: dict[str, CapacityHold] = {}

    def resolve_pool(self, pool_key: str) -> PoolConfig:
        """The pool named ``pool_key``; an empty key means the only pool, if there is one."""
        if not pool_key and len(self._pools) == 1:
            return next(iter(self._pools.values()))
        if not pool_key:
            raise InvalidArgument("pool_key", "required when the agent fronts several pools")
        try:
            return self._pools[pool_key]
        except KeyError:
            raise NotFound(f"no pool {pool_key!r} on this agent") from None

    def start(self, spec: WorkloadSpec) -> tuple[Workload, bool]:
        """Accept a workload; returns it and whether it was created (False: id already known)."""
        if not spec.workload_id:
            raise InvalidArgument("workload_id", "must not be empty")
        with self._cond:
            # Idempotent per id: a retried dispatch must not start a second run.
            existing = self._workloads.get(spec.workload_id)
            if existing is not None:
                return existing, False
        pool = self.resolve_pool(spec.pool_key)
        if not 1 <= spec.accelerators <= pool.accelerators:
            raise InvalidArgument("accelerators", f"must be between 1 and {pool.accelerators}")
        if spec.duration_seconds < 0:
            raise InvalidArgument("duration_seconds", "must be >= 0")
        spec = replace(spec, pool_key=pool.key)
        with self._cond:
            existing = self._workloads.get(spec.workload_id)
            if existing is not None:  # lost a race with a concurrent identical start
                return existing, False
            workload = Workload(spec=spec, state=WorkloadState.PENDING, created_at=self._clock())
            self._workloads[spec.workload_id] = workload
        thread = threading.Thread(
            target=self._run, args=(spec.workload_id,), name=f"workload-{spec.workload_id}"
        )
        thread.daemon = True  # a simulated run must not keep a stopping agent alive
        thread.start()
        return workload, True

    def get(self, workload_id: str) -> Workload:
        """The current snapshot of a workload; NotFound if unknown."""
        with self._cond:
            return self._get_locked(workload_id)

    def stop(self, workload_id: str, reason: str = "", grace_seconds: float = 0.0) -> Workload:
        """Stop a workload; one that already ended is returned unchanged. With
        ``grace_seconds`` (scaled like every simulated duration) a RUNNING workload goes on that
        long, to save its state, and is stopped then (a pending one is stopped at once)."""
        if grace_seconds < 0 or grace_seconds != grace_seconds:
            raise InvalidArgument("grace_seconds", "must be >= 0")
        with self._cond:
            workload = self._get_locked(workload_id)
            if workload.state in TERMINAL_STATES:
                return workload
            if grace_seconds > 0 and workload.state is WorkloadState.RUNNING:
                timer = threading.Timer(
                    grace_seconds * self._time_scale,
                    self.stop,
                    args=(workload_id, f"{reason or 'stopped'} (after a grace period)"),
                )
                timer.daemon = True
                timer.start()
                return workload
            return self._transition(workload, WorkloadState.STOPPED, reason or "stopped")

    def watch(self, workload_id: str, is_active: Callable[[], bool]) -> Iterator[Workload]:
        """Yield the current snapshot, then each change, ending after a terminal state.

        ``is_active`` tells whether the watcher is still there (the gRPC context); it is polled
        so that an abandoned stream frees its server thread.
        """
        seen = -1
        while True:
            with self._cond:
                workload = self._get_locked(workload_id)
                while workload.version == seen:
                    self._cond.wait(WATCH_POLL_SECONDS)
                    if not is_active() or self._closed:
                        return
                    workload = self._workloads[workload_id]
            seen = workload.version
            yield workload  # outside the lock: the consumer may be slow
            if workload.state in TERMINAL_STATES:
                return

    def hold(self, hold: CapacityHold) -> tuple[CapacityHold, bool]:
        """Record a hold (in-process the broker's ledger is the only capacity check);
        idempotent per id."""
        pool = self.resolve_pool(hold.pool_key)
        hold = replace(hold, pool_key=pool.key, start=max(hold.start, self._clock()))
        check_hold(hold, pool, self._clock())
        with self._cond:
            existing = self._holds.get(hold.hold_id)
            if existing is not None:
                return existing, False
            nodes = -(-hold.accelerators // pool.accelerators_per_node)
            hold = replace(hold, nodes=nodes)
            self._holds[hold.hold_id] = hold
            return hold, True

    def release(self, hold_id: str, reason: str = "") -> bool:
        """Forget a hold; False if there was none."""
        with self._cond:
            return self._holds.pop(hold_id, None) is not None

    def device_details(self, pool_key: str) -> tuple[str, ...]:
        """What the runner knows of the pool's devices (nothing in-process: the host is
        detected instead)."""
        return ()

    def healthy(self, pool_key: str) -> int:
        """Accelerators of the pool that can run work (a simulation has no failing hardware)."""
        return self._pools[pool_key].accelerators

    def busy(self, pool_key: str) -> int:
        """Accelerators of the pool held by RUNNING workloads."""
        with self._cond:
            return self._busy.get(pool_key, 0)

    def close(self) -> None:
        """Wake every waiting thread and let them end (agent shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _get_locked(self, workload_id: str) -> Workload:
        try:
            return self._workloads[workload_id]
        except KeyError:
            raise NotFound(f"no workload {workload_id!r} on this agent") from None

    def _transition(self, workload: Workload, to: WorkloadState, message: str) -> Workload:
        """Move a workload to ``to``; the only writer of state. Call with the lock held."""
        now = self._clock()
        pool_key = workload.spec.pool_key
        if workload.state is WorkloadState.RUNNING:
            self._busy[pool_key] -= workload.spec.accelerators
        if to is WorkloadState.RUNNING:
            self._busy[pool_key] += workload.spec.accelerators
        updated = replace(
            workload,
            state=to,
            started_at=now if to is WorkloadState.RUNNING else workload.started_at,
            finished_at=now if to in TERMINAL_STATES else None,
            message=message,
            version=workload.version + 1,
        )
        self._workloads[workload.spec.workload_id] = updated
        self._cond.notify_all()
        return updated

    def _run(self, workload_id: str) -> None:
        """Thread body: wait for start-up and capacity, run for the scaled duration, finish."""
        startup_ends = time.monotonic() + self._startup_seconds * self._time_scale
        with self._cond:
            while True:
                workload = self._workloads[workload_id]
                if workload.state is not WorkloadState.PENDING or self._closed:
                    return  # stopped while pending
                pool = self._pools[workload.spec.pool_key]
                free = pool.accelerators - self._busy[pool.key]
                wait = startup_ends - time.monotonic()
                if wait <= 0 and free >= workload.spec.accelerators:
                    break
                # Woken by any transition (capacity may have been released) or the start-up end.
                self._cond.wait(wait if wait > 0 else None)
            workload = self._transition(workload, WorkloadState.RUNNING, "running")
            ends = time.monotonic() + workload.spec.duration_seconds * self._time_scale
            while True:
                workload = self._workloads[workload_id]
                remaining = ends - time.monotonic()
                if workload.state is not WorkloadState.RUNNING or self._closed or remaining <= 0:
                    break
                self._cond.wait(remaining)
            if workload.state is WorkloadState.RUNNING and not self._closed:
                if workload.spec.command.strip() == "false":
                    self._transition(workload, WorkloadState.FAILED, "command exited with 1")
                else:
                    self._transition(workload, WorkloadState.SUCCEEDED, "completed")
