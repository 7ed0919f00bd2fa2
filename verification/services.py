"""Every write of verification goes through a function here.

The verification pipeline (``verification_run``) follows healthchecks' ``sendalerts``: claim the
run by compare-and-set, do the slow network work outside any transaction, then write the verdict
in one short transaction that re-checks the claim, so a run is finished exactly once whatever
the number of workers and redeliveries. Pool status moves only through
``registry.services.lifecycle_transition``.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import os
import secrets
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from agent.challenge import assemble_rows, digest, input_matrix, link_signs
from agent.challenge import precision as precision_of
from interconnect.metrics import HEARTBEATS, VERIFICATION_VERDICTS
from interconnect.tasking import enqueue_on_commit
from registry import certificates
from registry import selectors as registry_selectors
from registry import services as registry_services
from registry.actors import Actor, signed_in
from registry.choices import ChangeAction, Door, Status
from registry.clock import db_now
from registry.errors import IllegalTransition
from registry.models import Center, LifecycleTransition, Pool
from registry.netguard import OutboundRefused, grpc_authority_options, outbound_target
from verification import agent_client, selectors
from verification.choices import OPEN_STATES, RunState, Trigger
from verification.errors import AgentUnavailable, UnknownPool, VerificationRefuted
from verification.freivalds import StepChecker, one_blas_thread, tflops
from verification.models import Heartbeat, ScheduledDowntime, VerificationRun

logger = logging.getLogger(__name__)

# Sent by name (interconnect.tasking): services never import task modules.
POOL_VERIFY_TASK = "verification.tasks.pool_verify"

# Pools a verification may run on. An offline pool is re-submitted first (offline -> submitted).
VERIFIABLE_STATUSES = frozenset(
    {Status.SUBMITTED, Status.VERIFYING, Status.ACTIVE, Status.DEGRADED}
)
# Status reasons written by the heartbeat sweeper start with this, so it only undoes its own moves.
HEARTBEAT_REASON = "no heartbeat"
# The reason a pool is degraded while its agent reports fewer healthy accelerators than it
# has (a node drained or down in the center's scheduler).
HEALTH_REASON = "unhealthy accelerators"
# Seconds the verifier waits for a chain beyond 1.5x what the tolerance allows (start-up,
# network, a busy host).
BENCHMARK_DEADLINE_SLACK = 3.0
# Smallest product a challenge uses, however slow the device.
MIN_MATRIX_SIZE = 64
# Largest product a challenge uses, per declared precision (and never above
# VERIFICATION_MAX_MATRIX_SIZE). The check's bound per row grows like n^1.5 while the residual
# of a computation rounded once more than declared grows like n, so a cheat's ratio residual /
# bound falls like 1/n: the cap keeps each measured cheat refused on every seed with a margin
# of 2 at the largest n the plan can choose (docs/verification.md, "Lower precision at large
# n"). `.venv/bin/python bench/verification_precision.py` (k = 8, 3 seeds, smallest ratio):
# - fp32, TF32 inputs: 4.68 at n = 512, 2.33 at 1024, 1.33 at 2048, 0.689 (accepted) at 4096.
# - bf16, product rounded to BF16: 7.92 at 2048, 4.02 at 4096, 1.9 at 8192; FP16 accumulation
#   (k 16): 7.3 at 2048, 5.57 at 4096 (falls like 1/sqrt(n)).
# - fp16, product rounded to FP16 before it is returned: 3.3 at 512, 1.79 at 1024, 0.903
#   (accepted) at 2048; FP16 accumulation (k 16): 7.92 at 2048, 5.8 at 4096.
# - fp64, FP32 inputs: 45,100 at 4096.
MAX_MATRIX_SIZE_BY_PRECISION: dict[str, int] = {
    "fp32": 1024,
    "bf16": 4096,
    "fp16": 512,
    "fp64": 8192,
}
# Products behind one commitment, at most, whatever VERIFICATION_MAX_INNER says: a step of
# more links is nearly low-rank and cheaply approximated (docs/verification.md, "Composite
# steps"; rank n / 4 passes at 64 BF16 links). It also keeps FP16 steps, scaled by 1/sqrt(n)
# only, far from overflowing (256 products at n = 64 overflowed in 5 of 6 seeds, 64 did not).
MAX_INNER_LINKS = 8
# Reasons of drift verdicts start with this, so a later pass only undoes its own degradation.
DRIFT_REASON = "drift"
# Reasons of the degradation an unanswered re-verification (an ``error`` run) sets start with
# this; a later pass undoes it, and ``VERIFICATION_MAX_CONSECUTIVE_ERRORS`` in a row fail the pool.
UNREACHABLE_REASON = "agent unreachable"
# Degradations a passed run disproves, so the pass lifts them (health and silence are the
# heartbeats' to judge, and a reason platform staff wrote stays).
VERIFIER_REASONS = (DRIFT_REASON, UNREACHABLE_REASON)
# The runs the platform starts unannounced (or on submission); an operator's own run is recorded
# but neither breaks an error streak nor lifts an unanswered-run degradation.
PLATFORM_TRIGGERS = frozenset({Trigger.SCHEDULED, Trigger.SUBMITTED})
# Deliveries of one run beyond the retries before it is declared a poison message.
EXTRA_DELIVERIES = 3


# --- Requesting a run -------------------------------------------------------------------------


def verification_request(
    *, pool: Pool, trigger: Trigger, actor: Actor | None, door: Door
) -> tuple[VerificationRun, bool]:
    """Queue a verification run of ``pool``; returns the run and whether it is new.

    At most one run per pool is open (a partial unique constraint): asking again while one is
    queued or running returns that one. The task is enqueued when the transaction commits, so
    the worker never looks for a run that is not there yet.
    """
    if pool.status not in VERIFIABLE_STATUSES:
        raise ValidationError(
            {"status": [f"A {pool.status} pool cannot be verified; submit it first."]}
        )
    if trigger not in Trigger.values:
        raise ValidationError({"trigger": [f"Unknown trigger {trigger!r}."]})
    requester = signed_in(actor)
    try:
        with transaction.atomic():
            run = VerificationRun.objects.create(
                pool=pool,
                trigger=trigger,
                requested_by=requester,
                agent_endpoint=pool.center.agent_endpoint,
                enqueued_at=timezone.now(),
            )
    except IntegrityError:
        existing = VerificationRun.objects.filter(pool=pool, state__in=OPEN_STATES).first()
        if existing is None:  # the open run finished between our insert and this read
            return verification_request(pool=pool, trigger=trigger, actor=actor, door=door)
        return existing, False
    run_id = str(run.run_id)
    enqueue_on_commit(POOL_VERIFY_TASK, run_id)
    logger.info("verification %s of %s queued (%s, %s)", run_id, pool.national_id, trigger, door)
    return run, True


def verification_requeue_stale(*, now: dt.datetime | None = None) -> int:
    """Send the task again for open runs whose message seems lost; returns how many.

    A queued run not picked up ``VERIFICATION_REQUEUE_AFTER`` seconds after its last send, or a
    running one whose claim outlived the task's hard limit (its worker died and the message went
    with it), is sent again. Duplicates are harmless: the claim admits one worker per run.
    """
    now = now or timezone.now()
    stale_send = now - dt.timedelta(seconds=settings.VERIFICATION_REQUEUE_AFTER)
    stale_claim = now - dt.timedelta(seconds=settings.VERIFICATION_TASK_TIME_LIMIT)
    runs = VerificationRun.objects.filter(
        Q(state=RunState.QUEUED, enqueued_at__lt=stale_send)
        | Q(state=RunState.RUNNING, claimed_at__lt=stale_claim, enqueued_at__lt=stale_send)
    ).values_list("pk", "run_id", "enqueued_at")

    sent = 0
    for pk, run_id, enqueued_at in runs:
        # Compare-and-set on the last send: two sweeps at once send one message.
        if VerificationRun.objects.filter(pk=pk, enqueued_at=enqueued_at).update(enqueued_at=now):
            enqueue_on_commit(POOL_VERIFY_TASK, str(run_id))
            sent += 1
    return sent


# --- Claiming ---------------------------------------------------------------------------------


def _worker_identity() -> str:
    """host:pid:nonce of this attempt; the nonce tells two attempts of one process apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _claim_is_dead(claimed_by: str) -> bool:
    """True if the claim was made on this host by a process that no longer exists.

    Lets a redelivered task take over at once after its worker was killed, instead of waiting
    for the claim to expire. Claims from other hosts are judged by age only.
    """
    host, _, rest = claimed_by.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class RunOutcome:
    """What one delivery of the task did: the run's state, and when to look again if another
    live worker holds the run (``retry_in`` seconds), else None."""

    state: str
    retry_in: float | None = None


def _claim(run_id: str, me: str) -> tuple[VerificationRun | None, RunOutcome | None]:
    """Claim the run by compare-and-set; (run, None) if we hold it, else (None, outcome)."""
    now = timezone.now()
    claim = {
        "state": RunState.RUNNING,
        "claimed_by": me,
        "claimed_at": now,
        "attempts": models.F("attempts") + 1,
    }
    if VerificationRun.objects.filter(run_id=run_id, state=RunState.QUEUED).update(**claim):
        return VerificationRun.objects.select_related("pool__center").get(run_id=run_id), None
    current = VerificationRun.objects.filter(run_id=run_id).first()
    if current is None:
        return None, RunOutcome(state="missing")
    if current.state != RunState.RUNNING:
        return None, RunOutcome(state=current.state)  # finished: never finish it again
    limit = dt.timedelta(seconds=settings.VERIFICATION_TASK_TIME_LIMIT)
    expired = current.claimed_at is None or now - current.claimed_at > limit
    if expired or _claim_is_dead(current.claimed_by):
        # Take over from a dead worker; the CAS on the old claim makes one taker win.
        taken = VerificationRun.objects.filter(
            pk=current.pk, state=RunState.RUNNING, claimed_by=current.claimed_by
        ).update(**claim)
        if taken:
            logger.warning("run %s taken over from %s", run_id, current.claimed_by)
            return VerificationRun.objects.select_related("pool__center").get(pk=current.pk), None
        return None, RunOutcome(state=RunState.RUNNING, retry_in=1.0)
    assert current.claimed_at is not None
    remaining = (limit - (now - current.claimed_at)).total_seconds()
    return None, RunOutcome(state=RunState.RUNNING, retry_in=max(1.0, remaining + 1.0))


def _release(run: VerificationRun, me: str) -> None:
    """Give a claimed run back to the queue for the next retry (transient agent error)."""
    VerificationRun.objects.filter(pk=run.pk, state=RunState.RUNNING, claimed_by=me).update(
        state=RunState.QUEUED, claimed_by="", claimed_at=None
    )


# --- Running ----------------------------------------------------------------------------------


@dataclass
class Evidence:
    """What a run found, written to the run in the finishing transaction."""

    fields: dict[str, Any] = field(default_factory=dict)
    measured_tflops: float | None = None  # real-time TFLOPS per accelerator, when measured
    # The challenge's id once it is recorded as sent (``_record_challenge``), and the phase the
    # run is in from then on: a failure after it names the phase and fails the run.
    challenge_id: str = ""
    phase: str = ""

    def set(self, **values: Any) -> None:
        self.fields.update(values)


def verification_run(*, run_id: str, final_attempt: bool = False) -> RunOutcome:
    """Carry out one verification run: claim, probe the agent, judge, record the verdict.

    Idempotent per run id: a finished run is left alone, a run held by a live worker is left to
    it (the caller looks again after ``retry_in``). A transient agent error before the challenge
    is sent releases the claim and raises ``AgentUnavailable`` so the task retries; on the
    ``final_attempt`` it ends the run ERROR instead. Any failure after it is sent ends the run
    FAILED naming its phase (``_probe_and_judge``), the task's soft time limit and unexpected
    errors included; a delivery that finds the challenge sent by an earlier one (a takeover
    after a time limit, a kill or an out-of-memory) fails the run without challenging again.
    An exception before the challenge is sent leaves the run claimed, and a later delivery
    takes it over and retries it.
    """
    me = _worker_identity()
    run, outcome = _claim(run_id, me)
    if run is None:
        assert outcome is not None
        return outcome
    if run.challenge_sent_at is not None:
        # A new challenge would draw nodes, seeds and checked steps again: an agent that could
        # make the delivery die after seeing the draw would get to redraw until it misses it.
        reason = (
            f"commitments: the challenge {run.challenge_id} sent at "
            f"{run.challenge_sent_at.isoformat(timespec='seconds')} was not completed (its "
            "delivery stopped before a verdict: time limit, worker killed or out of memory); a "
            "run is challenged once, never again with a new draw"
        )
        return _finish(run, me, RunState.FAILED, reason[:500], Evidence())
    max_deliveries = settings.VERIFICATION_MAX_RETRIES + 1 + EXTRA_DELIVERIES
    if run.attempts > max_deliveries:
        reason = f"agent unreachable: gave up after {run.attempts - 1} deliveries"
        return _finish(run, me, RunState.ERROR, reason, Evidence())
    if run.started_at is None:
        VerificationRun.objects.filter(pk=run.pk).update(started_at=timezone.now())
        run.started_at = timezone.now()
    pool = run.pool
    if pool.status == Status.SUBMITTED:
        try:
            registry_services.lifecycle_transition(
                obj=pool,
                to=Status.VERIFYING,
                reason=f"verification {run.run_id} started",
                actor=None,
                door=Door.WORKER,
            )
        except IllegalTransition:
            pool.refresh_from_db()  # moved meanwhile (withdrawn, retired): judged at the end
    evidence = Evidence()
    try:
        # Network and arithmetic, outside any transaction: a slow agent holds no lock.
        _probe_and_judge(run, pool, evidence)
    except AgentUnavailable as exc:
        if evidence.challenge_id:  # never after the challenge (agent_client.abandoned); if it were
            return _finish(run, me, RunState.FAILED, _abandoned(evidence, exc), evidence)
        if final_attempt:
            return _finish(run, me, RunState.ERROR, f"agent unreachable: {exc}"[:500], evidence)
        _release(run, me)
        raise
    except VerificationRefuted as exc:
        return _finish(run, me, RunState.FAILED, str(exc)[:500], evidence)
    except Exception as exc:
        # SoftTimeLimitExceeded (an Exception) or a fault of ours. Before the challenge: the run
        # stays claimed and a later delivery takes it over (as after a kill). After it: failed
        # now, naming the phase, since a later delivery must not challenge again.
        if not evidence.challenge_id:
            raise
        logger.warning("run %s stopped in %s: %r", run.run_id, evidence.phase, exc)
        return _finish(run, me, RunState.FAILED, _abandoned(evidence, exc), evidence)
    assert evidence.measured_tflops is not None
    reason = (
        f"verified: {evidence.measured_tflops:.1f} TFLOPS per accelerator measured (slowest of "
        f"{len(evidence.fields.get('devices', []))} devices), "
        f"{pool.declared_tflops_per_accelerator:g} declared"
    )
    drift_reason = _judge_drift(pool, run, evidence)
    return _finish(run, me, RunState.PASSED, drift_reason or reason, evidence)


def _abandoned(evidence: Evidence, exc: BaseException) -> str:
    """The reason of a run whose challenge was sent and whose delivery then stopped on ``exc``
    (not a verdict of the checks: the task's time limit, an error)."""
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        why = "the task's time limit ran out"
    else:
        why = f"{type(exc).__name__}: {exc}"
    return (
        f"{evidence.phase or 'commitments'}: the challenge {evidence.challenge_id} was not "
        f"completed ({why}); a run is challenged once, never again with a new draw"
    )[:500]


def _record_challenge(run: VerificationRun, challenge_id: str, evidence: Evidence) -> None:
    """Record, committed before ``RunBenchmark`` is sent, that this run's challenge goes out: a
    later delivery then fails the run instead of drawing again. Refused (the run is not sent)
    if this delivery no longer holds the run."""
    now = timezone.now()
    held = VerificationRun.objects.filter(
        pk=run.pk, state=RunState.RUNNING, claimed_by=run.claimed_by, challenge_sent_at=None
    ).update(challenge_sent_at=now, challenge_id=challenge_id)
    if not held:
        raise VerificationRefuted("claim lost before the challenge was sent (not sent)")
    run.challenge_sent_at, run.challenge_id = now, challenge_id
    evidence.challenge_id, evidence.phase = challenge_id, "commitments"


def _judge_drift(pool: Pool, run: VerificationRun, evidence: Evidence) -> str:
    """Compare the measurement with the pool's best of its last passed runs; the reason when it
    fell more than ``VERIFICATION_DRIFT_THRESHOLD`` below, else ""."""
    assert evidence.measured_tflops is not None
    history = selectors.passed_measurements(pool, exclude_run=run.pk)
    record = selectors.drift_record(history)
    if record is None:
        return ""
    ratio = evidence.measured_tflops / record
    evidence.set(drift=round(ratio, 4))
    if evidence.measured_tflops >= selectors.drift_floor(record):
        return ""
    return (
        f"{DRIFT_REASON}: measured {evidence.measured_tflops:.1f} TFLOPS per accelerator, "
        f"{1 - ratio:.0%} below its record of {record:.1f} over the last {len(history)} passed "
        f"runs (threshold {settings.VERIFICATION_DRIFT_THRESHOLD:.0%})"
    )


def _match_inventory(
    pool: Pool, inventory: agent_client.Inventory
) -> tuple[agent_client.InventoryPool | None, dict[str, Any]]:
    """The agent's pool that matches the declared one, and the comparison as evidence."""
    slug = pool.accelerator.slug
    candidates = [p for p in inventory.pools if p.accelerator_model == slug]
    if not candidates and len(inventory.pools) == 1:
        candidates = list(inventory.pools)
    found = candidates[0] if candidates else None
    details: dict[str, Any] = {
        "agent_id": inventory.agent_id,
        "agent_version": inventory.agent_version,
        "simulated": inventory.simulated,
        "declared": {
            "accelerator_model": slug,
            "accelerators_per_node": pool.accelerators_per_node,
            "nodes": pool.nodes,
        },
        "reported": None,
        "mismatches": [],
    }
    if found is None:
        details["mismatches"] = [f"the agent reports no {slug} pool"]
        return None, details
    details["reported"] = {
        "pool_key": found.pool_key,
        "accelerator_model": found.accelerator_model,
        "accelerators_per_node": found.accelerators_per_node,
        "nodes": found.nodes,
        "device_details": list(found.device_details)[:20],
    }
    for name in ("accelerator_model", "accelerators_per_node", "nodes"):
        declared, reported = details["declared"][name], details["reported"][name]
        if declared != reported:
            details["mismatches"].append(f"{name}: declared {declared}, agent reports {reported}")
    return found, details


def _dial_target(endpoint: str) -> str:
    """The address to dial for ``endpoint``, checked right before connecting by the one outbound
    guard (``registry.netguard.outbound_target``, also used by dispatch and webhooks): a DNS
    answer changed since registration must not reach a private host, so outside development
    the worker dials the address it checked, not the name."""
    try:
        return outbound_target(endpoint, allow_private=settings.AGENT_ENDPOINT_ALLOW_LOOPBACK)
    except OutboundRefused as exc:
        if exc.transient:  # DNS may be down for a moment: retry
            raise AgentUnavailable(f"agent endpoint: {exc}") from exc
        raise VerificationRefuted(f"agent endpoint refused: {exc}") from exc


@dataclass(frozen=True)
class ChallengePlan:
    """The challenge a run sends: size, chain length, precision and the devices under test."""

    n: int
    steps: int
    inner: int  # chained products behind each commitment
    precision: str
    devices: dict[int, int]  # device index -> seed
    nodes: list[int]
    node_count: int


def max_matrix_size(name: str) -> int:
    """The largest n a challenge in precision ``name`` may use: VERIFICATION_MAX_MATRIX_SIZE,
    or less where a lower-precision computation would pass the check at larger n
    (``MAX_MATRIX_SIZE_BY_PRECISION``)."""
    configured = int(settings.VERIFICATION_MAX_MATRIX_SIZE)
    return min(configured, MAX_MATRIX_SIZE_BY_PRECISION.get(name, configured))


def plan_challenge(pool: Pool) -> ChallengePlan:
    """Size the challenge for this pool's model and declaration; sample its nodes.

    The chain is long enough that an honest device at the declared speed (scaled) spends about
    ``VERIFICATION_TARGET_SECONDS``: n starts at ``VERIFICATION_MATRIX_SIZE`` and doubles while
    the chain would need more than ``VERIFICATION_MAX_STEPS`` steps (up to the maximum size,
    ``max_matrix_size``: smaller in FP32, BF16 and FP16, where larger products let a lower
    precision pass the check; a fast device then gets a chain shorter than the target).
    It halves n (down to 64) while the chain would be shorter than ``VERIFICATION_MIN_STEPS``.
    Every node is challenged (``VERIFICATION_SAMPLE_NODES`` = 0, the default), or a sample
    drawn with the OS's CSPRNG, so the agent cannot know in advance which will be challenged.
    """
    declared = float(pool.declared_tflops_per_accelerator or 0.0)
    flops_per_second = declared * 1e12 * float(settings.VERIFICATION_TIME_SCALE)
    budget = float(settings.VERIFICATION_TARGET_SECONDS) * flops_per_second

    def steps_at(size: int) -> float:
        return budget / (2.0 * size**3)

    largest = max_matrix_size(pool.declared_precision)
    n = min(settings.VERIFICATION_MATRIX_SIZE, largest)
    while steps_at(n) < settings.VERIFICATION_MIN_STEPS and n // 2 >= MIN_MATRIX_SIZE:
        n //= 2  # a slow device (or a small time scale): smaller products, same duration
    while steps_at(n) > settings.VERIFICATION_MAX_STEPS and n * 2 <= largest:
        n *= 2  # a fast device: larger products, so the chain stays within MAX_STEPS

    def clamp(value: float) -> int:
        low, high = int(settings.VERIFICATION_MIN_STEPS), int(settings.VERIFICATION_MAX_STEPS)
        return min(max(math.ceil(value), low), high)

    max_inner = max(1, min(int(settings.VERIFICATION_MAX_INNER), MAX_INNER_LINKS))

    def inner_at(size: int) -> int:
        # Products behind each commitment, so that a step lasts VERIFICATION_MIN_STEP_SECONDS
        # at the declared speed (hashing and copying a product must stay small next to it),
        # and so that a chain held to VERIFICATION_MAX_STEPS at this size (n at its maximum,
        # or cut down to fit the agent's memory) still lasts the target.
        one = 2.0 * size**3 / max(flops_per_second, 1e-30)
        wanted = max(
            math.ceil(float(settings.VERIFICATION_MIN_STEP_SECONDS) / one),
            math.ceil(steps_at(size) / int(settings.VERIFICATION_MAX_STEPS)),
        )
        return min(max(wanted, 1), max_inner)

    inner = inner_at(n)
    steps = clamp(steps_at(n) / inner)
    sample = settings.VERIFICATION_SAMPLE_NODES
    system = secrets.SystemRandom()
    nodes = sorted(
        system.sample(range(pool.nodes), min(sample, pool.nodes) if sample else pool.nodes)
    )
    per = pool.accelerators_per_node
    devices = {node * per + slot: secrets.randbits(64) for node in nodes for slot in range(per)}
    # The agent keeps every product until it is opened (one agent fronts the pool, so every
    # challenged device's products are in its memory, and the verifier holds the opened ones):
    # keep the chain within VERIFICATION_MAX_CHALLENGE_BYTES with fewer steps first, down to
    # VERIFICATION_MIN_STEPS (in the same memory, larger products hold more work: steps x n^2
    # bytes for steps x n^3 flops), then smaller products. A fast device's chain, or every
    # device's in a large pool, then lasts less than the target: it is measured over a shorter
    # time.
    itemsize = precision_of(pool.declared_precision).accumulator.itemsize

    def kept(size: int, length: int) -> int:
        return len(devices) * length * size * size * itemsize

    cap = settings.VERIFICATION_MAX_CHALLENGE_BYTES

    def fitting(size: int, length: int) -> int:
        return min(length, int(cap) // kept(size, 1))

    while fitting(n, steps) < settings.VERIFICATION_MIN_STEPS and n // 2 >= MIN_MATRIX_SIZE:
        n //= 2
        inner = inner_at(n)
        steps = clamp(steps_at(n) / inner)
    steps = max(2, fitting(n, steps))
    return ChallengePlan(
        n=n,
        steps=steps,
        inner=inner,
        precision=pool.declared_precision,
        devices=devices,
        nodes=nodes,
        node_count=pool.nodes,
    )


def sample_bound(nodes: int, sampled: int, missing_share: float) -> float:
    """Probability that a sample of ``sampled`` of ``nodes`` nodes, drawn without replacement,
    misses every node of a pool where ``missing_share`` of the nodes are not what is declared."""
    bad = math.ceil(nodes * missing_share)
    if sampled >= nodes or bad == 0:
        return 0.0 if bad else 1.0
    return math.comb(nodes - bad, sampled) / math.comb(nodes, sampled)


def _check_inventory(
    channel: Any, pool: Pool, evidence: Evidence, timeout: float
) -> agent_client.InventoryPool:
    """The agent's inventory must match the declaration, and a simulated agent is refused
    outside a demo or a test."""
    inventory = agent_client.get_inventory(channel, timeout=timeout)
    reported, match = _match_inventory(pool, inventory)
    evidence.set(agent_id=inventory.agent_id[:200], inventory_match=match)
    if reported is None or match["mismatches"]:
        raise VerificationRefuted("inventory mismatch: " + "; ".join(match["mismatches"]))
    if inventory.simulated and not settings.VERIFICATION_ACCEPT_SIMULATED:
        raise VerificationRefuted(
            "simulated agent: the agent reports a simulated center, and this deployment does "
            "not accept them (VERIFICATION_ACCEPT_SIMULATED is off)"
        )
    return reported


def _probe_and_judge(run: VerificationRun, pool: Pool, evidence: Evidence) -> None:
    """Challenge the agent and judge its answers; raises VerificationRefuted with the reason.

    Order of the checks, each naming itself in the reason: inventory, simulated, commitments
    (every step of every device, in order), opening (each product hashes to its commitment),
    arithmetic (Freivalds on every opened step, including the last), impossible (faster than
    the catalog's peak), throughput (the slowest device against the declaration).

    Only the calls made before the challenge is sent (the TLS check, health, inventory) may raise
    ``AgentUnavailable`` (a retry with a fresh plan); together they have
    ``VERIFICATION_PRECHALLENGE_SECONDS``, so an agent cannot spend the task's time limit before
    the challenge. The challenge is recorded as sent on the run before ``RunBenchmark``
    (``_record_challenge``); from then on the agent has seen the sampled nodes and then the
    checked steps, and any failure is ``VerificationRefuted`` naming its phase
    (``agent_client.abandoned``, ``evidence.phase`` for the rest), so no draw can be refused
    and redrawn.
    """
    k, scale = settings.VERIFICATION_FREIVALDS_ROUNDS, settings.VERIFICATION_TIME_SCALE
    tolerance, timeout = settings.VERIFICATION_TOLERANCE, settings.VERIFICATION_RPC_TIMEOUT
    endpoint = pool.center.agent_endpoint
    declared = float(pool.declared_tflops_per_accelerator or 0.0)
    peak = pool.accelerator.peak_tflops(pool.declared_precision)
    evidence.set(
        agent_endpoint=endpoint,
        k=k,
        time_scale=scale,
        tolerance=tolerance,
        declared_tflops_per_accelerator=pool.declared_tflops_per_accelerator,
        peak_tflops_per_accelerator=peak,
        dtype=pool.declared_precision,
    )
    if not endpoint:
        raise VerificationRefuted("the center declares no agent endpoint")
    if not declared:
        raise VerificationRefuted("the pool declares no throughput to verify")
    if peak is not None and declared > peak * (1 + settings.VERIFICATION_PEAK_MARGIN):
        raise VerificationRefuted(
            f"impossible declaration: {declared:g} TFLOPS per accelerator is above the "
            f"catalog's {pool.declared_precision.upper()} peak of {peak:g} for "
            f"{pool.accelerator.slug}"
        )
    plan = plan_challenge(pool)
    evidence.set(
        n=plan.n,
        steps=plan.steps,
        seed=str(next(iter(plan.devices.values()))),
        sample={
            "inner": plan.inner,
            "nodes": plan.nodes,
            "of_nodes": plan.node_count,
            "devices": len(plan.devices),
            # Chance that a pool with a tenth of its nodes not as declared passes unnoticed.
            "miss_probability_10pct_bad": round(
                sample_bound(plan.node_count, len(plan.nodes), 0.10), 6
            ),
        },
    )
    # A new id per attempt: a retried run must not collide with what the agent kept.
    challenge_id = f"{run.run_id}.{run.attempts}.{secrets.token_hex(4)}"
    # At the declared speed the chain takes `expected` seconds; a device below the tolerance
    # fails anyway, so the verifier stops waiting at 1.5x what the tolerance allows.
    expected = plan.steps * plan.inner * 2.0 * plan.n**3 / (declared * 1e12 * scale)
    deadline = expected / tolerance * 1.5 + BENCHMARK_DEADLINE_SLACK
    evidence.fields["sample"]["deadline_seconds"] = round(deadline, 3)
    address = _dial_target(endpoint)
    authority = grpc_authority_options(endpoint) if address != endpoint else []
    credentials = None
    # One deadline for every wait before the challenge (handshake, pings, inventory).
    before = time.monotonic() + float(settings.VERIFICATION_PRECHALLENGE_SECONDS)

    def left(cap: float) -> float:
        remaining = before - time.monotonic()
        if remaining <= 0:
            raise AgentUnavailable(
                "agent too slow before the challenge: the TLS check, health checks and "
                f"inventory took over {settings.VERIFICATION_PRECHALLENGE_SECONDS:g} s"
            )
        return min(cap, remaining)

    if certificates.mutual_tls():
        # Mutual TLS: the agent must hold a current certificate naming this center.
        try:
            certificates.check_agent(
                address, pool.center.national_id, timeout=left(min(timeout, 10.0))
            )
        except certificates.AgentIdentityRefused as exc:
            raise VerificationRefuted(f"agent identity: {exc}") from exc
        except OSError as exc:
            raise AgentUnavailable(f"agent unreachable for the TLS check: {exc}") from exc
        credentials, authority = certificates.agent_credentials(pool.center.national_id)
    with agent_client.agent_channel(address, options=authority, credentials=credentials) as channel:
        rtt_ms = agent_client.round_trip_ms(channel, timeout=left(min(timeout, 10.0)))
        evidence.set(rtt_ms=round(rtt_ms, 3))
        reported = _check_inventory(channel, pool, evidence, left(timeout))
        left(timeout)  # the inventory's answer may have arrived past the deadline
        _record_challenge(run, challenge_id, evidence)
        answer = agent_client.run_benchmark(
            channel,
            n=plan.n,
            dtype=plan.precision,
            steps=plan.steps,
            devices=plan.devices,
            pool_key=reported.pool_key,
            challenge_id=challenge_id,
            nonce=secrets.token_bytes(32),
            inner=plan.inner,
            timeout=deadline,
        )
        # The clock has stopped: every time below was read when its commitment arrived.
        device_evidence: dict[int, dict[str, Any]] = {
            d: {
                "device": d,
                "node": d // pool.accelerators_per_node,
                # None until the last step's commitment arrived (JSON has no infinity).
                "seconds": (
                    round(answer.arrivals[(d, plan.steps)], 6)
                    if (d, plan.steps) in answer.arrivals
                    else None
                ),
                **answer.reports.get(d, {}),
            }
            for d in plan.devices
        }
        evidence.set(devices=list(device_evidence.values()))
        late = [d for d in plan.devices if (d, plan.steps) not in answer.arrivals]
        if answer.timed_out and late:
            done = sum(1 for key in answer.arrivals if key[0] == late[0])
            raise VerificationRefuted(
                f"throughput: device {late[0]} had committed {done} of {plan.steps} steps when "
                f"the verifier stopped waiting ({deadline:.1f} s; the chain takes {expected:.1f} s "
                "at the declared speed)"
            )
        if answer.problems:
            raise VerificationRefuted("commitments: " + "; ".join(answer.problems[:3]))
        # Only now, with every commitment in, does the verifier pick what to open.
        opened = _choose_steps(plan.steps)
        evidence.phase = "opening"
        evidence.fields["sample"]["steps_checked"] = opened
        needed = sorted({(d, s) for d in plan.devices for t in opened for s in (t - 1, t) if s})
        blocks = agent_client.open_benchmark(
            channel,
            challenge_id=challenge_id,
            openings=needed,
            n=plan.n,
            precision=plan.precision,
            timeout=timeout,
        )
    products = _opened_products(blocks, plan, answer, challenge_id)
    evidence.phase = "arithmetic"
    checks = _check_chains(products, answer.digests, plan, opened, k, device_evidence)
    evidence.set(freivalds=checks, devices=list(device_evidence.values()))

    # Throughput of each device on the verifier's clock (network time left in: conservative).
    for entry in device_evidence.values():
        entry["tflops"] = round(
            tflops(plan.n, plan.steps * plan.inner, entry["seconds"]) / scale, 3
        )
    slowest = min(device_evidence.values(), key=lambda e: e["tflops"])
    fastest = max(device_evidence.values(), key=lambda e: e["tflops"])
    measured = float(slowest["tflops"])
    evidence.measured_tflops = measured
    evidence.set(
        measured_tflops_per_accelerator=round(measured, 3),
        wall_seconds=round(max(e["seconds"] for e in device_evidence.values()), 6),
        devices=list(device_evidence.values()),
    )
    if peak is not None and fastest["tflops"] > peak * (1 + settings.VERIFICATION_PEAK_MARGIN):
        raise VerificationRefuted(
            f"impossible: device {fastest['device']} measured {fastest['tflops']:.1f} TFLOPS, "
            f"above the catalog's {plan.precision.upper()} peak of {peak:g} for "
            f"{pool.accelerator.slug} (margin {settings.VERIFICATION_PEAK_MARGIN:.0%})"
        )
    if measured < tolerance * declared:
        raise VerificationRefuted(
            f"throughput: device {slowest['device']} measured {measured:.1f} TFLOPS, "
            f"{measured / declared:.0%} of the declared {declared:g} (tolerance {tolerance:.0%})"
        )


def _choose_steps(steps: int) -> list[int]:
    """The steps to check, drawn after every commitment arrived (``VERIFICATION_OPEN_STEPS``;
    0, or as many as the chain has: all). A sample always holds the last two steps: the clock
    stopped on the last, and with its predecessor checked too neither of the final products can
    be skipped or copied (so a prover that skips every other step is caught whatever the
    draw); the others are drawn uniformly from the rest with the OS's CSPRNG. Checking step t
    opens C_{t-1} as well (X_{t-1} comes from it). A chain of at most
    ``VERIFICATION_OPEN_ALL_UP_TO`` steps is checked whole: with few steps, one drawn step leaves
    a prover who fakes half of them a coin toss (found by review: 6 of 8 runs passed at 1.5x the
    hardware's speed). docs/verification.md gives the chance that a prover who fakes a share of
    the steps goes unnoticed."""
    count = settings.VERIFICATION_OPEN_STEPS
    if not count or count >= steps or steps <= settings.VERIFICATION_OPEN_ALL_UP_TO:
        return list(range(1, steps + 1))
    forced = [steps] if count == 1 else [steps - 1, steps]
    others = secrets.SystemRandom().sample(range(1, steps - 1), max(0, count - 2))
    return sorted([*others, *forced])


def _opened_products(
    blocks: dict[tuple[int, int], list[tuple[int, int, bytes]]],
    plan: ChallengePlan,
    answer: agent_client.BenchmarkAnswer,
    challenge_id: str,
) -> dict[tuple[int, int], Any]:
    """Reassemble the opened products and hold each to its commitment: each as the row blocks
    it arrived in (``assemble_rows``: checked for gaps and overlaps, not copied), hashed and
    checked a block at a time."""
    products = {}
    for (device, step), parts in blocks.items():
        try:
            product = assemble_rows(parts, plan.n, plan.precision)
        except ValueError as exc:
            raise VerificationRefuted(f"bad data: device {device} step {step}: {exc}") from exc
        expected = answer.digests[(device, step)]
        found = digest(product, plan.precision, challenge_id=challenge_id, device=device, step=step)
        if not secrets.compare_digest(found, expected):
            raise VerificationRefuted(
                f"opening: device {device} step {step} does not match its commitment (the "
                "product revealed is not the one committed while the clock ran)"
            )
        products[(device, step)] = product
    return products


def _check_chains(
    products: dict[tuple[int, int], Any],
    digests: dict[tuple[int, int], bytes],
    plan: ChallengePlan,
    opened: list[int],
    k: int,
    device_evidence: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    """Freivalds on every checked step of every device, with vectors drawn now.

    Per device: B from the seed (A only when step 1 is checked), B's side of the check once
    (``StepChecker``), then per checked step t one O(inner k n^2) check of C_t against X_{t-1},
    derived from the opened C_{t-1} a block of rows at a time, with neither a rounded nor a
    transposed copy (``StepChecker.check_steps``: a product that is both checked and the
    input of the next checked step is read once for both, and the links of composite steps
    pass over B once for all the steps)."""
    with one_blas_thread(plan.n):
        return _check_devices(products, digests, plan, opened, k, device_evidence)


def _opened(products: dict[tuple[int, int], Any], device: int, step: int) -> Any:
    return products[(device, step)]


def _check_devices(
    products: dict[tuple[int, int], Any],
    digests: dict[tuple[int, int], bytes],
    plan: ChallengePlan,
    opened: list[int],
    k: int,
    device_evidence: dict[int, dict[str, Any]],
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(secrets.randbits(128))
    results = []
    first = next(iter(plan.devices))
    for device, seed in plan.devices.items():
        b = input_matrix(seed, 1, plan.n, plan.precision)
        checker = StepChecker(b, plan.precision, k=k, rng=rng)

        def signs(step: int, seed: int = seed) -> Any:  # each step's own link signs
            return link_signs(seed, plan.n, plan.inner, plan.precision, step=step)

        worst = 0.0
        by_step = checker.check_steps(
            opened,
            functools.partial(_opened, products, device),
            functools.partial(_opened, digests, device),
            functools.partial(input_matrix, seed, 0, plan.n, plan.precision),
            plan.inner,
            signs,
        )
        for step in opened:
            checks = by_step[step]
            worst = max(worst, max(c.worst_ratio for c in checks))
            if device == first and step == opened[-1]:
                results = [c.as_json() for c in checks]
            failed = sum(not c.passed for c in checks)
            if failed:
                device_evidence[device]["worst_ratio"] = round(worst, 6)
                raise VerificationRefuted(
                    f"arithmetic: device {device} step {step} is not X @ B in "
                    f"{plan.precision.upper()} (Freivalds: {failed} of {k} vectors, residual up "
                    f"to {worst:.3g} x the bound; a wrong product or lower precision)"
                )
        device_evidence[device]["steps_opened"] = len(opened)
        device_evidence[device]["worst_ratio"] = round(worst, 6)
    return results


def _next_due(state: str, now: dt.datetime) -> dt.datetime:
    """When the pool should be re-verified: a jittered interval so centers cannot predict it
    (shown to platform staff only: ``VerificationRunSerializer``, the run page)."""
    hours = settings.VERIFICATION_REVERIFY_HOURS
    if state == RunState.ERROR:
        hours /= 4  # the agent was unreachable: look again sooner
    jitter = settings.VERIFICATION_REVERIFY_JITTER
    factor = secrets.SystemRandom().uniform(1.0 - jitter, 1.0 + jitter)
    return now + dt.timedelta(hours=hours * factor)


def _finish(
    run: VerificationRun, me: str, state: str, reason: str, evidence: Evidence
) -> RunOutcome:
    """Write the verdict and move the pool, in one short transaction, exactly once per run."""
    now = timezone.now()
    with transaction.atomic():
        locked = VerificationRun.objects.select_for_update().get(pk=run.pk)
        if locked.state != RunState.RUNNING or locked.claimed_by != me:
            # Another worker took the run over (our claim expired) or finished it: its verdict
            # stands, ours is dropped.
            logger.warning("run %s: verdict %s dropped, claim lost", run.run_id, state)
            return RunOutcome(state=locked.state)
        for name, value in evidence.fields.items():
            setattr(locked, name, value)
        locked.state = state
        locked.verdict_reason = reason
        locked.finished_at = now
        # Only the platform's own runs set the schedule: an operator's run must not push the
        # next unannounced one later (reverify_sweep ignores its runs too).
        if locked.trigger != Trigger.OPERATOR_REQUEST:
            locked.next_due_at = _next_due(state, now)
        locked.save()
        pool = Pool.objects.select_for_update(of=("self",)).get(pk=run.pool_id)
        _apply_verdict(pool, state, reason, evidence, now, trigger=locked.trigger)
    logger.info("verification %s of %s: %s (%s)", run.run_id, pool.national_id, state, reason)
    VERIFICATION_VERDICTS.labels(str(state).lower()).inc()
    return RunOutcome(state=state)


def _apply_verdict(
    pool: Pool,
    state: str,
    reason: str,
    evidence: Evidence,
    now: dt.datetime,
    *,
    trigger: str = Trigger.SCHEDULED,
) -> None:
    """Move the pool according to the verdict (inside the finishing transaction).

    A verdict that lands while the pool is offline (its agent fell silent when the verifier
    knocked) counts as on a listed pool: failed fails it, and an error counts towards the limit
    (the heartbeat restore then brings it back degraded, ``_before_silence``). Only the
    platform's runs (``PLATFORM_TRIGGERS``) lift an unanswered-run degradation: a center cannot
    refuse the unannounced runs and pass only the ones it asks for at a time of its choosing.
    """

    def move(to: str, why: str) -> None:
        registry_services.lifecycle_transition(
            obj=pool, to=to, reason=why, actor=None, door=Door.WORKER
        )

    if state == RunState.PASSED:
        if pool.status not in (Status.VERIFYING, Status.ACTIVE, Status.DEGRADED):
            return  # withdrawn or retired meanwhile: the evidence stays on the run
        assert evidence.measured_tflops is not None
        registry_services.pool_record_measurement(
            pool=pool,
            measured_tflops_per_accelerator=round(evidence.measured_tflops, 3),
            verified_at=now,
            actor=None,
            door=Door.WORKER,
        )
        drifted = reason.startswith(DRIFT_REASON)
        if pool.status == Status.VERIFYING:
            move(Status.ACTIVE, reason)
        if drifted and pool.status == Status.ACTIVE:
            move(Status.DEGRADED, reason)
        elif (
            not drifted
            and pool.status == Status.DEGRADED
            and pool.status_reason.startswith(VERIFIER_REASONS)
        ):
            # The pass disproves what the verifier degraded the pool for: drift (measured back
            # at its record) or an agent that did not answer (it just did, to the platform's
            # own run; an operator's run is recorded and lifts nothing).
            if pool.status_reason.startswith(DRIFT_REASON):
                move(Status.ACTIVE, "measured back at its record: " + reason)
            elif trigger in PLATFORM_TRIGGERS:
                move(Status.ACTIVE, "agent answered again: " + reason)
        _activate_center(pool)
    elif state == RunState.FAILED:
        if pool.status in (Status.VERIFYING, Status.ACTIVE, Status.DEGRADED, Status.OFFLINE):
            move(Status.FAILED, reason)
    elif state == RunState.ERROR:
        why = reason if reason.startswith(UNREACHABLE_REASON) else f"{UNREACHABLE_REASON}: {reason}"
        errors = _consecutive_errors(pool)
        limit = max(1, settings.VERIFICATION_MAX_CONSECUTIVE_ERRORS)
        if pool.status == Status.VERIFYING:
            move(Status.FAILED, why)
        elif pool.status in (Status.ACTIVE, Status.DEGRADED, Status.OFFLINE) and errors >= limit:
            # A listed pool whose agent keeps refusing to be re-verified is not verified any
            # more: it cannot stay degraded (and listed) for good.
            move(Status.FAILED, f"{UNREACHABLE_REASON} for {errors} verifications in a row: {why}")
        elif pool.status == Status.ACTIVE:
            move(Status.DEGRADED, why)
        elif pool.status == Status.DEGRADED and pool.status_reason.startswith(HEARTBEAT_REASON):
            # Silent and not answering: offline, still the sweeper's (its reason), so that
            # heartbeats resuming restore it, degraded for this run (``_before_silence``).
            move(Status.OFFLINE, f"{HEARTBEAT_REASON}; {why}")
        # Offline: the error stays on the run, which the heartbeat restore reads.


def _consecutive_errors(pool: Pool) -> int:
    """How many of the pool's latest finished platform runs ended ``error`` in a row (this one
    counted: called after its verdict was saved). An operator's run, whatever its verdict, does
    not break the streak."""
    limit = max(1, settings.VERIFICATION_MAX_CONSECUTIVE_ERRORS)
    latest = (
        VerificationRun.objects.filter(
            pool=pool, finished_at__isnull=False, trigger__in=sorted(PLATFORM_TRIGGERS)
        )
        .order_by("-finished_at", "-id")
        .values_list("state", flat=True)[:limit]
    )
    count = 0
    for state in latest:
        if state != RunState.ERROR:
            break
        count += 1
    return count


def _activate_center(pool: Pool) -> None:
    """A center becomes active with its first verified pool: its agent has just proved it is
    reachable and truthful, and a pool is listed only inside a listed center."""
    center = Center.objects.select_for_update().get(pk=pool.center_id)
    why = f"verified through pool {pool.national_id}"
    for to in (Status.VERIFYING, Status.ACTIVE):
        if (
            center.status == Status.SUBMITTED
            and to == Status.VERIFYING
            or (center.status == Status.VERIFYING and to == Status.ACTIVE)
        ):
            registry_services.lifecycle_transition(
                obj=center, to=to, reason=why, actor=None, door=Door.WORKER
            )


# --- Heartbeats -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolBeat:
    """One pool's entry in a heartbeat, as any door parsed it."""

    national_id: str
    utilization: float
    accelerators_healthy: int
    accelerators_busy: int


def heartbeat_record(
    *,
    actor: Actor,
    agent_id: str,
    sent_at: dt.datetime | None,
    pools: Sequence[PoolBeat],
    center_national_id: str = "",
    certified_center: str | None = None,
) -> list[Heartbeat]:
    """Record that an agent is alive and how busy its pools are (one row per pool).

    Only an operator (or the platform) may report, and only for pools it owns: any other pool is
    ``UnknownPool``, whether it exists or not. Bad values are a ``ValidationError`` whose keys
    name the entry (``pools[1].utilization``); nothing is written unless every entry is valid.
    ``center_national_id``, when the agent sends it, must be the center of every pool.
    ``certified_center``, the center the agent's certificate names (mutual TLS), must be the
    center of every pool, or nothing is written (PermissionDenied, whoever owns the pool).
    """
    if not registry_selectors.can_operate(actor):
        raise PermissionDenied("Only center operators report heartbeats.")
    if certified_center is not None:
        foreign = [
            beat.national_id
            for beat in pools
            if not beat.national_id.startswith(f"{certified_center}-")
        ]
        if foreign or (center_national_id and center_national_id != certified_center):
            raise PermissionDenied(
                f"The agent's certificate names {certified_center}; it may report only that "
                f"center's pools (not {', '.join(foreign) or center_national_id})."
            )
    errors: dict[str, list[str]] = {}
    if not agent_id:
        errors["agent_id"] = ["An agent id is required."]
    if not pools:
        errors["pools"] = ["A heartbeat reports at least one pool."]
    for i, beat in enumerate(pools):
        where = f"pools[{i}]"
        if not beat.national_id:
            errors[f"{where}.pool_national_id"] = ["The pool's national id is required."]
        if not 0.0 <= beat.utilization <= 1.0:  # also false for NaN
            errors[f"{where}.utilization"] = ["Utilization must be between 0 and 1."]
        if beat.accelerators_busy > beat.accelerators_healthy:
            errors[f"{where}.accelerators_busy"] = ["Cannot exceed accelerators_healthy."]
    if errors:
        raise ValidationError(errors)
    ids = {beat.national_id for beat in pools}
    owned = {
        p.national_id: p
        for p in registry_selectors.pools_editable_by(actor).filter(national_id__in=ids)
    }
    for i, beat in enumerate(pools):
        pool = owned.get(beat.national_id)
        if pool is None:
            raise UnknownPool(beat.national_id)
        if certified_center is not None and pool.center.national_id != certified_center:
            raise PermissionDenied(f"The agent's certificate names {certified_center}.")
        if center_national_id and pool.center.national_id != center_national_id:
            raise ValidationError(
                {f"pools[{i}].pool_national_id": [f"Not a pool of {center_national_id}."]}
            )
        if beat.accelerators_healthy > pool.accelerators:
            raise ValidationError(
                {f"pools[{i}].accelerators_healthy": [f"The pool has {pool.accelerators}."]}
            )
    # Stamped with the database's clock, the one the sweeper judges silence by (X12).
    now = db_now()
    rows = [
        Heartbeat(
            pool=owned[beat.national_id],
            time=now,
            sent_at=sent_at,
            agent_id=agent_id[:200],
            utilization=beat.utilization,
            accelerators_healthy=beat.accelerators_healthy,
            accelerators_busy=beat.accelerators_busy,
        )
        for beat in pools
    ]
    # The beat and the status it implies become visible together.
    with transaction.atomic():
        recorded = Heartbeat.objects.bulk_create(rows)
        for beat in pools:
            _follow_health(owned[beat.national_id], beat.accelerators_healthy)
    HEARTBEATS.inc()
    return recorded


def _follow_health(pool: Pool, healthy: int) -> None:
    """An active pool whose agent reports fewer healthy accelerators than the pool has (a node
    drained or down) is degraded, saying how many; back to active once all are healthy again,
    but only from a degradation this rule set (an operator's or a verifier's reason stays)."""
    if healthy < pool.accelerators and pool.status == Status.ACTIVE:
        to, why = Status.DEGRADED, f"{HEALTH_REASON}: {healthy} of {pool.accelerators} healthy"
    elif (
        healthy >= pool.accelerators
        and pool.status == Status.DEGRADED
        and pool.status_reason.startswith(HEALTH_REASON)
    ):
        to, why = Status.ACTIVE, f"all {pool.accelerators} accelerators healthy again"
    else:
        return
    try:
        registry_services.lifecycle_transition(
            obj=pool, to=to, reason=why, actor=None, door=Door.WORKER
        )
    except IllegalTransition:
        pass  # moved meanwhile: the next heartbeat sees the new status


def _before_silence(pool: Pool) -> tuple[str, str]:
    """The status and reason the pool had before the silence that moved it, read back from the
    transition log (``lifecycle_transition`` writes a row with every move): the sweeper's own
    moves in a row, newest first, end at the one that started the silence, whose ``from_status``
    is what the pool was; the move before it says why. Heartbeats resuming bring back that,
    unless the platform's latest run during the silence got no answer: then the pool comes back
    degraded as an unanswered run leaves it (a center cannot go silent to shed that run)."""
    history = LifecycleTransition.objects.filter(
        object_type=Pool._meta.label_lower, object_id=pool.pk
    ).order_by("-time", "-id")
    started: LifecycleTransition | None = None  # the sweeper's move that began the silence
    for move in history.iterator(chunk_size=16):
        if move.reason.startswith(HEARTBEAT_REASON):
            started = move
            continue
        if started is not None and move.to_status == started.from_status:
            return _unanswered_in_silence(pool, started, (started.from_status, move.reason))
        break
    if started is None:
        return Status.ACTIVE, ""  # no move of the sweeper on record: a status set by hand
    return _unanswered_in_silence(pool, started, (started.from_status, ""))


def _unanswered_in_silence(
    pool: Pool, started: LifecycleTransition, before: tuple[str, str]
) -> tuple[str, str]:
    """``before``, or degraded for an unanswered run when the platform's latest run that
    finished since the silence began (``started``) ended ``error``."""
    latest = (
        VerificationRun.objects.filter(
            pool=pool, finished_at__gte=started.time, trigger__in=sorted(PLATFORM_TRIGGERS)
        )
        .order_by("-finished_at", "-id")
        .first()
    )
    if latest is None or latest.state != RunState.ERROR or before[0] != Status.ACTIVE:
        return before  # a degradation before the silence comes back with its own reason
    reason = latest.verdict_reason
    return Status.DEGRADED, (
        reason if reason.startswith(UNREACHABLE_REASON) else f"{UNREACHABLE_REASON}: {reason}"
    )


def heartbeat_sweep(*, now: dt.datetime | None = None) -> dict[str, int]:
    """Move verified pools by the age of their last heartbeat; returns moves by target status.

    Silent for ``HEARTBEAT_DEGRADED_AFTER`` seconds: active -> degraded; for
    ``HEARTBEAT_OFFLINE_AFTER``: -> offline; heard again: back to what the pool was before the
    silence (a degradation for drift, an unanswered verification or unhealthy accelerators comes
    back with its reason, never as active), and only from a status this sweeper set. A pool
    never heard from counts from its verification. Safe to run twice: every move is a
    compare-and-set.
    """
    # The database's clock, not this worker's: heartbeats are stamped with it (X12).
    now = now or db_now()
    degraded_after = dt.timedelta(seconds=settings.HEARTBEAT_DEGRADED_AFTER)
    offline_after = dt.timedelta(seconds=settings.HEARTBEAT_OFFLINE_AFTER)
    latest = Heartbeat.objects.filter(pool=OuterRef("pk")).order_by("-time")
    pools = Pool.objects.filter(
        verified_at__isnull=False,
        status__in=[Status.ACTIVE, Status.DEGRADED, Status.OFFLINE],
    ).annotate(
        last_seen=Subquery(latest.values("time")[:1]),
        last_healthy=Subquery(latest.values("accelerators_healthy")[:1]),
    )
    moves = {Status.ACTIVE: 0, Status.DEGRADED: 0, Status.OFFLINE: 0}
    for pool in pools:
        seen = pool.last_seen or pool.verified_at
        assert seen is not None
        silent = now - seen
        seconds = int(silent.total_seconds())
        target: str | None = None
        why = ""
        if silent >= offline_after and pool.status in (Status.ACTIVE, Status.DEGRADED):
            target, why = Status.OFFLINE, f"{HEARTBEAT_REASON} for {seconds} s"
        elif silent >= degraded_after and pool.status == Status.ACTIVE:
            target, why = Status.DEGRADED, f"{HEARTBEAT_REASON} for {seconds} s"
        elif (
            silent < degraded_after
            and pool.status in (Status.DEGRADED, Status.OFFLINE)
            and pool.status_reason.startswith(HEARTBEAT_REASON)
        ):
            target, why = _before_silence(pool)
            if target == Status.ACTIVE:
                why = "heartbeats resumed"
            elif not why:
                why = "heartbeats resumed; degraded before the silence"
            if target not in (Status.ACTIVE, Status.DEGRADED) or target == pool.status:
                # Nothing to restore that a move could (the sweeper degrades active pools only,
                # so degraded -> degraded means a log it did not write): left as it is.
                target = None
        if target is None:
            continue
        try:
            registry_services.lifecycle_transition(
                obj=pool, to=target, reason=why, actor=None, door=Door.WORKER
            )
        except IllegalTransition:
            continue  # changed meanwhile; the next sweep sees the new state
        moves[Status(target)] += 1
        if target == Status.ACTIVE and pool.last_healthy is not None:
            # Beats that resumed reporting a node down degrade it now, not at the next beat.
            _follow_health(pool, pool.last_healthy)
    return {str(k): v for k, v in moves.items()}


def heartbeat_prune(*, now: dt.datetime | None = None, batch: int = 10_000) -> int:
    """Delete heartbeats older than ``HEARTBEAT_RETENTION_DAYS``, at most ``batch`` rows a call
    (short statements: the sweep runs every minute and catches up). Returns rows deleted."""
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=settings.HEARTBEAT_RETENTION_DAYS)
    old = Heartbeat.objects.filter(time__lt=cutoff).order_by("time").values("pk")[:batch]
    deleted, _ = Heartbeat.objects.filter(pk__in=Subquery(old)).delete()
    return deleted


# --- Scheduled re-verification ----------------------------------------------------------------


def reverify_sweep(*, now: dt.datetime | None = None) -> list[VerificationRun]:
    """Queue a re-verification of every listed, verified pool whose jittered due time passed.

    The due time is set when one of the platform's runs finishes (``next_due_at``; a run the
    operator asked for sets none and is not read here, so it cannot push the schedule later); a
    verified pool without one is due a full interval after its verification. Two sweeps at once
    queue one run per pool: the open-run constraint refuses the second.
    """
    now = now or timezone.now()
    interval = dt.timedelta(hours=settings.VERIFICATION_REVERIFY_HOURS)
    due = (
        VerificationRun.objects.filter(pool=OuterRef("pk"), next_due_at__isnull=False)
        .exclude(trigger=Trigger.OPERATOR_REQUEST)
        .order_by("-created_at")
        .values("next_due_at")[:1]
    )
    candidates = (
        Pool.objects.filter(status__in=[Status.ACTIVE, Status.DEGRADED], verified_at__isnull=False)
        .exclude(verification_runs__state__in=sorted(OPEN_STATES))
        .select_related("center")
        .annotate(due_at=Subquery(due))
        .filter(Q(due_at__lte=now) | Q(due_at__isnull=True, verified_at__lte=now - interval))
    )
    queued = []
    for pool in candidates:
        run, created = verification_request(
            pool=pool, trigger=Trigger.SCHEDULED, actor=None, door=Door.WORKER
        )
        if created:
            queued.append(run)
    return queued


# --- Scheduled downtime -----------------------------------------------------------------------


def downtime_declare(
    *,
    actor: Actor,
    door: Door,
    start: dt.datetime,
    end: dt.datetime,
    reason: str = "",
    pool: Pool | None = None,
    center: Center | None = None,
) -> ScheduledDowntime:
    """Announce maintenance of one of the actor's pools or centers (left out of reliability)."""
    if (pool is None) == (center is None):
        raise ValidationError({"non_field_errors": ["Name either a pool or a center."]})
    if pool is not None and not registry_selectors.pools_editable_by(actor).filter(pk=pool.pk):
        raise ValidationError({"pool": ["Unknown pool."]})
    if center is not None and not registry_selectors.centers_editable_by(actor).filter(
        pk=center.pk
    ):
        raise ValidationError({"center": ["Unknown center."]})
    with transaction.atomic():
        downtime = ScheduledDowntime(
            pool=pool,
            center=center,
            start=start,
            end=end,
            reason=reason,
            declared_by=signed_in(actor),
        )
        downtime.full_clean()
        downtime.save()
        registry_services.change_record(
            obj=downtime,
            action=ChangeAction.CREATE,
            actor=actor,
            door=door,
            before=None,
            after=registry_services.snapshot(downtime),
        )
    return downtime


def downtime_delete(*, downtime: ScheduledDowntime, actor: Actor, door: Door) -> None:
    """Withdraw an announced downtime."""
    with transaction.atomic():
        before, pk = registry_services.snapshot(downtime), downtime.pk
        downtime.delete()
        registry_services.change_record(
            obj=downtime,
            action=ChangeAction.DELETE,
            actor=actor,
            door=door,
            before=before,
            after=None,
            object_id=pk,
        )
