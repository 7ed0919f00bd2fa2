"""Dispatch of booked workloads to the centers' agents, and following them to the end.

Called by the Celery tasks in ``brokers.tasks``. Every step is safe to run twice: the status
moves are compare-and-set, ``StartWorkload`` is idempotent per workload id on the agent, and
usage is recorded once per allocation. gRPC calls happen outside any database transaction;
only their results are written, in short ones. Channels are made lazily in the process that
uses them (never before a fork).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC
from enum import StrEnum

import grpc
from django.conf import settings
from google.protobuf.timestamp_pb2 import Timestamp

from brokers import services
from brokers.choices import FINAL_STATUSES, BookingStatus, EventKind
from brokers.models import Allocation, Booking
from brokers.placement.spec import WorkloadSpec
from protos import agent_pb2, agent_pb2_grpc
from registry import certificates
from registry.netguard import OutboundRefused, grpc_authority_options, outbound_target

logger = logging.getLogger(__name__)

CALL_TIMEOUT = 5.0
START_ATTEMPTS = 3
# One follow step polls for at most this long, then hands over to a new task (so no task runs
# near the Celery time limit, and a long workload costs no worker while it runs).
FOLLOW_BUDGET_SECONDS = 30.0
POLL_SECONDS = 0.2
# Bookings one relay run claims at most (the next run takes the rest).
RELAY_BATCH = 500
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

# (pid, endpoint, checked address, center, platform certificate files' stamp) -> channel
_channels: dict[tuple[object, ...], grpc.Channel] = {}
_pool_keys: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


class Outcome(StrEnum):
    """What a dispatch or follow step ended with."""

    GONE = "gone"  # booking missing or already final
    REPLACED = "replaced"
    FOLLOW = "follow"  # still running: follow again later
    DONE = "done"


class GuardRefused(grpc.RpcError):
    """The outbound guard refused the agent endpoint; handled like the agent refusing the call
    (``UNAVAILABLE`` when the name does not resolve right now, ``PERMISSION_DENIED`` for a
    private or malformed target)."""

    def __init__(self, refused: OutboundRefused) -> None:
        super().__init__(str(refused))
        self.refused = refused

    def code(self) -> grpc.StatusCode:
        if self.refused.transient:
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return f"refused by the outbound guard: {self.refused}"


class AgentIdentityError(grpc.RpcError):
    """Mutual TLS refused the agent: not the center's agent, or its certificate is expired,
    revoked or unknown (``PERMISSION_DENIED``: never retried)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.PERMISSION_DENIED

    def details(self) -> str:
        return f"agent identity: {self.reason}"


def agent_stub(endpoint: str, center: str) -> agent_pb2_grpc.AgentStub:
    """A stub on a channel to the address the outbound guard (``registry.netguard``) checked
    just now: the name is resolved and checked on every call, so a DNS answer changed to a
    private address is refused (``GuardRefused``), never dialled. Channels are made in this
    process (keyed by pid: never reused across fork) and by checked address.

    With mutual TLS (``registry.certificates.mutual_tls``) the channel presents the platform's
    certificate and accepts only one naming ``center`` (its national id); a new channel (after
    the platform's certificate was renewed) first checks that the agent's certificate is not
    revoked (``AgentIdentityError``)."""
    try:
        address = outbound_target(endpoint, allow_private=settings.AGENT_ENDPOINT_ALLOW_LOOPBACK)
    except OutboundRefused as exc:
        raise GuardRefused(exc) from None
    mutual = certificates.mutual_tls()
    stamp = certificates.platform_files().stamp() if mutual else ()
    key = (os.getpid(), endpoint, address, center, stamp)
    with _lock:
        channel = _channels.get(key)
    if channel is None:
        options = grpc_authority_options(endpoint) if address != endpoint else []
        if mutual:
            try:
                certificates.check_agent(address, center, timeout=CALL_TIMEOUT)
            except certificates.AgentIdentityRefused as exc:
                raise AgentIdentityError(str(exc)) from None
            except OSError:
                pass  # unreachable now: the call below fails UNAVAILABLE and is retried
            credentials, options = certificates.agent_credentials(center)
            channel = grpc.secure_channel(address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(address, options=options or None)
        with _lock:
            _channels[key] = channel
    return agent_pb2_grpc.AgentStub(channel)


def _pool_key(stub: agent_pb2_grpc.AgentStub, endpoint: str, model: str) -> str:
    """The agent's key of the pool with this accelerator model ("" lets a one-pool agent pick)."""
    cached = _pool_keys.get((endpoint, model))
    if cached is not None:
        return cached
    inventory = stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=CALL_TIMEOUT)
    keys = [p.pool_key for p in inventory.pools if p.accelerator_model == model]
    key = keys[0] if keys else ""
    _pool_keys[(endpoint, model)] = key
    return key


def workload_id(allocation: Allocation) -> str:
    return f"{allocation.booking.national_id}-{allocation.pk}"


def _start(allocation: Allocation, spec: WorkloadSpec) -> agent_pb2.StartWorkloadResponse:
    endpoint = allocation.pool.center.agent_endpoint
    if not endpoint:
        raise grpc.RpcError("the center has no agent endpoint")
    for attempt in range(START_ATTEMPTS):
        try:
            # Checked again on every attempt (outbound guard; with mutual TLS, the identity).
            stub = agent_stub(endpoint, allocation.pool.center.national_id)
            key = _pool_key(stub, endpoint, allocation.pool.accelerator.slug)
            started: agent_pb2.StartWorkloadResponse = stub.StartWorkload(
                agent_pb2.StartWorkloadRequest(
                    workload_id=workload_id(allocation),
                    pool_key=key,
                    accelerators=allocation.accelerators,
                    image=spec.image,
                    command=spec.command,
                    duration_seconds=spec.duration.total_seconds(),
                ),
                timeout=CALL_TIMEOUT,
            )
            return started
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in TRANSIENT or attempt == START_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _code(exc: grpc.RpcError) -> str:
    if isinstance(exc, GuardRefused):
        return exc.details()
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else str(exc)


def relay(*, limit: int = RELAY_BATCH, token: str = "") -> list[int]:
    """The dispatch relay and scheduler (the periodic ``dispatch_due_bookings``): claim every
    confirmed booking whose start is due, and every claimed one whose dispatch went stale, each
    by compare-and-set; returns the ids this call claimed (and must dispatch). Two relays at
    once split the bookings between them: none is claimed twice.

    ``token`` is the relay task's id. Claims are committed before their messages are sent, so a
    worker killed in between leaves claimed bookings without a message; the relay task itself
    is then redelivered under the same id and returns those again (its own unstarted claims)."""
    claimed = services.bookings_claimed_by(relay=token, limit=limit) if token else []
    due, stale = services.bookings_due_for_dispatch(limit=limit)
    claimed += [pk for pk in due if services.booking_dispatch_claim(booking_id=pk, relay=token)]
    claimed += [pk for pk in stale if services.booking_dispatch_reclaim(booking_id=pk)]
    return claimed


def dispatch(booking_id: int) -> Outcome:
    """Start the booking's workload at every center it holds; re-place it if one refuses.

    Runs for a booking the relay claimed (``dispatching``), or a redelivery of that task. A
    ``confirmed`` booking (a message from before the relay) is claimed here first, and left alone
    when not due yet or claimed by someone else.
    """
    booking = Booking.objects.filter(pk=booking_id).first()
    # A hold runs only once confirmed (its confirmation kicks the relay).
    if booking is None or booking.status in FINAL_STATUSES or booking.status == BookingStatus.HELD:
        return Outcome.GONE
    if booking.status == BookingStatus.CONFIRMED:
        if not services.booking_dispatch_claim(booking_id=booking_id):
            return Outcome.GONE
        booking.refresh_from_db()
    spec = WorkloadSpec.from_json(booking.spec)
    allocations = list(
        booking.allocations.select_related("booking", "pool__center", "pool__accelerator")
    )
    for allocation in allocations:
        center = allocation.pool.center.national_id
        try:
            response = _start(allocation, spec)
        except grpc.RpcError as exc:
            reason = f"dispatch to {center} failed ({_code(exc)})"
            logger.warning("booking %s: %s", booking.national_id, reason)
            _stop_all(allocations, reason)
            services.booking_replace(booking=booking, exclude_center=center, reason=reason)
            return Outcome.REPLACED
        if not allocation.workload_id:
            Allocation.objects.filter(pk=allocation.pk).update(workload_id=workload_id(allocation))
            allocation.workload_id = workload_id(allocation)
        # Recorded once per workload, whoever started it: a dispatch killed after StartWorkload
        # but before this line is redelivered, finds the workload there (created is False) and
        # records the start it never recorded.
        if response.created or not services.booking_dispatched(
            booking=booking, workload_id=allocation.workload_id
        ):
            services.booking_record(
                booking=booking,
                kind=EventKind.DISPATCHED,
                message=f"{allocation.accelerators} accelerators started at {center}",
                data={"pool": allocation.pool.national_id, "workload_id": allocation.workload_id},
            )
    return follow(booking_id)


_STATE_NAMES = {
    agent_pb2.WORKLOAD_STATE_PENDING: "pending",
    agent_pb2.WORKLOAD_STATE_RUNNING: "running",
    agent_pb2.WORKLOAD_STATE_SUCCEEDED: "succeeded",
    agent_pb2.WORKLOAD_STATE_FAILED: "failed",
    agent_pb2.WORKLOAD_STATE_STOPPED: "stopped",
}
_ENDED = frozenset({"succeeded", "failed", "stopped"})


def follow(booking_id: int, *, budget: float = FOLLOW_BUDGET_SECONDS) -> Outcome:
    """Poll the booking's workloads, record every change, move the booking's status; stop after
    ``budget`` seconds with ``FOLLOW`` (the task re-enqueues itself)."""
    deadline = time.monotonic() + budget
    while True:
        booking = Booking.objects.filter(pk=booking_id).first()
        if booking is None or booking.status in FINAL_STATUSES:
            return Outcome.GONE
        allocations = list(
            booking.allocations.select_related("booking", "pool__center").order_by("pk")
        )
        states: list[str] = []
        for allocation in allocations:
            try:
                center = allocation.pool.center
                reply = agent_stub(center.agent_endpoint, center.national_id).GetWorkload(
                    agent_pb2.GetWorkloadRequest(workload_id=workload_id(allocation)),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError as exc:
                logger.info("booking %s: agent not answering (%s)", booking_id, _code(exc))
                states.append(allocation.workload_state or "pending")
                continue
            workload = reply.workload
            state = _STATE_NAMES.get(workload.state, "pending")
            states.append(state)
            if state != allocation.workload_state:
                Allocation.objects.filter(pk=allocation.pk).update(workload_state=state)
                services.booking_record(
                    booking=booking,
                    kind=EventKind.WORKLOAD,
                    message=f"{allocation.pool.national_id}: {state}"
                    + (f" ({workload.message})" if workload.message else ""),
                    data={"pool": allocation.pool.national_id, "state": state},
                )
                if state in _ENDED and workload.HasField("started_at"):
                    services.usage_record(
                        allocation=allocation,
                        started_at=workload.started_at.ToDatetime(tzinfo=UTC),
                        finished_at=workload.finished_at.ToDatetime(tzinfo=UTC),
                        accelerator_hours=workload.accelerator_hours or None,
                    )
        outcome = _advance(booking, states)
        if outcome is not None:
            _release_holds(allocations, "the booking ended")
            return outcome
        if time.monotonic() >= deadline:
            return Outcome.FOLLOW
        time.sleep(POLL_SECONDS)


def _advance(booking: Booking, states: list[str]) -> Outcome | None:
    """Move the booking's status from its workloads' states; DONE once it is final."""
    active = {BookingStatus.DISPATCHING, BookingStatus.RUNNING}
    if states and all(s == "succeeded" for s in states):
        services.booking_record(
            booking=booking,
            kind=EventKind.STATUS,
            message="the workload finished at every center",
            to=BookingStatus.FINISHED,
            allowed_from=active,
        )
        return Outcome.DONE
    if any(s in ("failed", "stopped") for s in states):
        _stop_all(list(booking.allocations.select_related("pool__center")), "a part failed")
        services.booking_record(
            booking=booking,
            kind=EventKind.STATUS,
            message="the workload failed at a center",
            to=BookingStatus.FAILED,
            allowed_from=active,
        )
        return Outcome.DONE
    if (
        states
        and all(s in ("running", "succeeded") for s in states)
        and booking.status == BookingStatus.DISPATCHING
    ):
        services.booking_record(
            booking=booking,
            kind=EventKind.STATUS,
            message="running at every center",
            to=BookingStatus.RUNNING,
            allowed_from={BookingStatus.DISPATCHING},
        )
    return None


def _stop_all(allocations: list[Allocation], reason: str) -> None:
    for allocation in allocations:
        endpoint = allocation.pool.center.agent_endpoint
        if not endpoint:
            continue
        try:
            agent_stub(endpoint, allocation.pool.center.national_id).StopWorkload(
                agent_pb2.StopWorkloadRequest(
                    workload_id=f"{allocation.booking.national_id}-{allocation.pk}", reason=reason
                ),
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError:
            pass  # never started there, or the agent is gone: nothing to stop


# A center refusing to hold a window (its nodes taken locally) or holding a conflicting one.
HOLD_REFUSED = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION})
HOLDING_STATUSES = frozenset({BookingStatus.CONFIRMED, BookingStatus.DISPATCHING})


def _hold(allocation: Allocation, booking: Booking) -> agent_pb2.HoldCapacityResponse:
    endpoint = allocation.pool.center.agent_endpoint
    if not endpoint:
        raise grpc.RpcError("the center has no agent endpoint")
    stub = agent_stub(endpoint, allocation.pool.center.national_id)
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(booking.window_start)
    end.FromDatetime(booking.window_end)
    held: agent_pb2.HoldCapacityResponse = stub.HoldCapacity(
        agent_pb2.HoldCapacityRequest(
            hold_id=workload_id(allocation),
            pool_key=_pool_key(stub, endpoint, allocation.pool.accelerator.slug),
            accelerators=allocation.accelerators,
            start_time=start,
            end_time=end,
        ),
        timeout=CALL_TIMEOUT * 4,  # a Slurm agent runs scontrol (slow while the ctld is busy)
    )
    return held


def sync_holds(booking_id: int) -> Outcome:
    """Hold a confirmed booking's window at each of its centers; release a final one's.

    A center that refuses (``RESOURCE_EXHAUSTED``/``FAILED_PRECONDITION``: its nodes are taken
    locally) makes the booking re-placed elsewhere, like a refused dispatch. A center that does
    not answer, or an agent without holds (``UNIMPLEMENTED``), leaves the ledger's hold alone:
    the dispatch finds out at the start.
    """
    booking = Booking.objects.filter(pk=booking_id).first()
    if booking is None:
        return Outcome.GONE
    allocations = list(
        booking.allocations.select_related("booking", "pool__center", "pool__accelerator")
    )
    if booking.status in FINAL_STATUSES:
        _release_holds(allocations, f"the booking is {booking.status}")
        return Outcome.DONE
    if booking.status not in HOLDING_STATUSES:
        return Outcome.GONE
    for allocation in allocations:
        center = allocation.pool.center.national_id
        try:
            reply = _hold(allocation, booking)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            if code not in HOLD_REFUSED:
                logger.info("booking %s: no hold at %s (%s)", booking_id, center, _code(exc))
                continue
            details = exc.details() if hasattr(exc, "details") else str(exc)
            reason = f"{center} could not hold the window ({details})"
            logger.warning("booking %s: %s", booking.national_id, reason)
            _release_holds(allocations, reason)
            services.booking_replace(booking=booking, exclude_center=center, reason=reason)
            return Outcome.REPLACED
        if reply.created and reply.hold.reference:  # a scheduler's hold (e.g. a reservation)
            services.booking_record(
                booking=booking,
                kind=EventKind.DISPATCHED,
                message=f"{center} holds the window "
                f"({reply.hold.reference}, {reply.hold.nodes} whole nodes)",
                data={"pool": allocation.pool.national_id, "hold": reply.hold.reference},
            )
    return Outcome.DONE


def _release_holds(allocations: list[Allocation], reason: str) -> None:
    for allocation in allocations:
        endpoint = allocation.pool.center.agent_endpoint
        if not endpoint:
            continue
        try:
            agent_stub(endpoint, allocation.pool.center.national_id).ReleaseCapacity(
                agent_pb2.ReleaseCapacityRequest(
                    hold_id=f"{allocation.booking.national_id}-{allocation.pk}", reason=reason
                ),
                timeout=CALL_TIMEOUT * 4,
            )
        except grpc.RpcError:
            pass  # never held there, or the agent is gone: Slurm drops it at its end


def move_holds(seller_id: int, bought_id: int) -> None:
    """A resale, at the centers: the seller's holds are released first (and made again for the
    part it kept, if it sold only a later part), then the buyer's are made, in this order, so a
    scheduler that holds whole nodes (Slurm) never sees both at once."""
    seller = Booking.objects.filter(pk=seller_id).first()
    if seller is not None:
        allocations = list(
            seller.allocations.select_related("booking", "pool__center", "pool__accelerator")
        )
        _release_holds(allocations, "resold to another firm")
        sync_holds(seller_id)
    sync_holds(bought_id)


def stop(booking_id: int) -> None:
    """Stop a cancelled booking's workloads at their centers."""
    booking = Booking.objects.filter(pk=booking_id).first()
    if booking is None:
        return
    _stop_all(list(booking.allocations.select_related("booking", "pool__center")), "cancelled")


def stop_preempted(booking_id: int, *, budget: float = FOLLOW_BUDGET_SECONDS) -> bool:
    """Ask the agents to stop a preempted booking's workloads after the grace period (the
    workload keeps running meanwhile, to save its state), then follow them until they end and
    record the usage each really had. True when every workload has ended (or never started)."""
    from brokers.market import preemption_grace_seconds

    booking = Booking.objects.filter(pk=booking_id).first()
    if booking is None:
        return True
    allocations = list(booking.allocations.select_related("booking", "pool__center").order_by("pk"))
    deadline = time.monotonic() + budget
    grace = preemption_grace_seconds()
    pending = []
    for allocation in allocations:
        endpoint = allocation.pool.center.agent_endpoint
        if not endpoint:
            continue
        try:
            agent_stub(endpoint, allocation.pool.center.national_id).StopWorkload(
                agent_pb2.StopWorkloadRequest(
                    workload_id=workload_id(allocation),
                    reason="preempted by a reserved or priority booking",
                    grace_seconds=grace,
                ),
                timeout=CALL_TIMEOUT,
            )
        except grpc.RpcError:
            continue  # never started there, or the agent is gone: nothing runs to bill
        pending.append(allocation)
    while pending:
        for allocation in list(pending):
            try:
                center = allocation.pool.center
                reply = agent_stub(center.agent_endpoint, center.national_id).GetWorkload(
                    agent_pb2.GetWorkloadRequest(workload_id=workload_id(allocation)),
                    timeout=CALL_TIMEOUT,
                )
            except grpc.RpcError:
                pending.remove(allocation)
                continue
            workload = reply.workload
            state = _STATE_NAMES.get(workload.state, "pending")
            if state not in _ENDED:
                continue
            pending.remove(allocation)
            Allocation.objects.filter(pk=allocation.pk).update(workload_state=state)
            if workload.HasField("started_at"):
                services.usage_record(
                    allocation=allocation,
                    started_at=workload.started_at.ToDatetime(tzinfo=UTC),
                    finished_at=workload.finished_at.ToDatetime(tzinfo=UTC),
                )
                services.booking_record(
                    booking=booking,
                    kind=EventKind.WORKLOAD,
                    message=f"{allocation.pool.national_id}: {state} after the grace period; "
                    "billed for what it ran",
                    data={"pool": allocation.pool.national_id, "state": state},
                )
        if pending and time.monotonic() >= deadline:
            return False
        if pending:
            time.sleep(POLL_SECONDS)
    return True
