"""What verification knows: runs with their evidence, heartbeats, and declared downtime."""

import uuid

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import F, Q

from registry.models import Center, Pool
from verification.choices import OPEN_STATES, RunState, Trigger


class VerificationRun(models.Model):
    """One attempt by the platform to prove that a pool is what its operator declared.

    A worker claims the run (``queued -> running``, compare-and-set), asks the pool's site agent
    for its inventory and a benchmark challenge, checks the product with Freivalds' algorithm and
    the time the agent claims against its own clock, and stores the evidence below with the
    verdict. ``run_id`` is the public identifier (URLs, task arguments, logs); a finished run is
    never finished again. A pool has at most one open (queued or running) run at a time.
    """

    run_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="verification_runs")
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    state = models.CharField(
        max_length=10, choices=RunState.choices, default=RunState.QUEUED, db_index=True
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # When a task for this run was last sent to the broker: the run row is the outbox, and a
    # queued run whose message was lost (broker restart) is sent again by the sweep.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    # Deliveries of the task that claimed this run; bounds a poison message's loop.
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True, help_text="host:pid of the worker.")
    claimed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Written, and committed, before RunBenchmark is sent: from then on the agent knows the
    # draw, so a delivery that finds it set (a takeover after a time limit, a kill, an OOM)
    # finishes the run failed instead of challenging again with a fresh draw.
    challenge_sent_at = models.DateTimeField(null=True, blank=True)
    challenge_id = models.CharField(max_length=100, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    verdict_reason = models.CharField(max_length=500, blank=True)
    # When the next scheduled re-verification is due: set on finishing, jittered per run so that
    # a center cannot predict when it will be tested.
    next_due_at = models.DateTimeField(null=True, blank=True)

    # --- evidence: the challenge ---
    agent_endpoint = models.CharField(max_length=255, blank=True)
    agent_id = models.CharField(max_length=200, blank=True)
    seed = models.CharField(
        max_length=40, blank=True, help_text="Seed of the first device challenged (uint64)."
    )
    n = models.PositiveIntegerField(null=True, blank=True)
    dtype = models.CharField(max_length=10, blank=True, help_text="Challenge precision.")
    steps = models.PositiveIntegerField(null=True, blank=True, help_text="Chain length.")
    k = models.PositiveIntegerField(null=True, blank=True, help_text="Freivalds vectors.")
    time_scale = models.FloatField(null=True, blank=True)
    # --- evidence: what was measured ---
    rtt_ms = models.FloatField(
        null=True, blank=True, help_text="Best health-check round trip (evidence only)."
    )
    wall_seconds = models.FloatField(
        null=True,
        blank=True,
        help_text="Verifier's clock, request sent to the slowest device's last commitment.",
    )
    measured_tflops_per_accelerator = models.FloatField(
        null=True,
        blank=True,
        help_text="The slowest device, scaled back to real time (divided by the time scale).",
    )
    declared_tflops_per_accelerator = models.FloatField(null=True, blank=True)
    peak_tflops_per_accelerator = models.FloatField(
        null=True, blank=True, help_text="The catalog's figure for the challenge precision."
    )
    tolerance = models.FloatField(null=True, blank=True)
    freivalds = models.JSONField(
        default=list, blank=True, help_text="One entry per vector: passed and residual/bound."
    )
    devices = models.JSONField(
        default=list,
        blank=True,
        help_text="Per device challenged: node, seconds, TFLOPS, steps opened, worst ratio.",
    )
    sample = models.JSONField(
        default=dict, blank=True, help_text="Nodes challenged out of the pool's, and the bound."
    )
    drift = models.FloatField(
        null=True,
        blank=True,
        help_text="Measured / the pool's best of its last passed runs (below the threshold: "
        "degraded).",
    )
    inventory_match = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # "The latest runs of a pool" (API lists, the re-verification sweep).
            models.Index(fields=["pool", "-created_at"], name="vrun_pool_created_idx"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["pool"],
                condition=Q(state__in=sorted(OPEN_STATES)),
                name="vrun_one_open_run_per_pool",
                violation_error_message="This pool already has a verification run in progress.",
            ),
            models.CheckConstraint(
                condition=Q(finished_at__isnull=True)
                | Q(started_at__isnull=True)
                | Q(finished_at__gte=F("started_at")),
                name="vrun_finished_after_started",
                violation_error_message="A run cannot finish before it started.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id} {self.state}"


class Heartbeat(models.Model):
    """A pool's site agent saying, at ``time``, that it is alive and how busy the pool is.

    The heartbeat sweeper reads the latest one per pool: silence moves a verified pool to
    degraded and then offline, and a new heartbeat brings it back.
    """

    pool = models.ForeignKey(Pool, on_delete=models.CASCADE, related_name="heartbeats")
    time = models.DateTimeField(help_text="When the platform received it (platform clock).")
    sent_at = models.DateTimeField(null=True, blank=True, help_text="The agent's clock.")
    agent_id = models.CharField(max_length=200)
    utilization = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    accelerators_healthy = models.PositiveIntegerField()
    accelerators_busy = models.PositiveIntegerField()

    class Meta:
        ordering = ["-time", "-id"]
        indexes = [
            # Serves "latest heartbeat per pool" (sweeper, API) as an index-only descent.
            models.Index(fields=["pool", "-time"], name="heartbeat_pool_latest_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(utilization__gte=0.0, utilization__lte=1.0),
                name="heartbeat_utilization_range",
                violation_error_message="Utilization must be between 0 and 1.",
            ),
            models.CheckConstraint(
                condition=Q(accelerators_busy__lte=F("accelerators_healthy")),
                name="heartbeat_busy_le_healthy",
                violation_error_message="Busy accelerators cannot outnumber healthy ones.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pool_id} @ {self.time:%Y-%m-%d %H:%M:%S}"


class ScheduledDowntime(models.Model):
    """Maintenance an operator announced for a pool or a whole center, from ``start`` to ``end``.

    Reliability leaves these periods out: a pool is not unreliable for being down when its
    operator said it would be.
    """

    pool = models.ForeignKey(
        Pool, null=True, blank=True, on_delete=models.CASCADE, related_name="downtimes"
    )
    center = models.ForeignKey(
        Center, null=True, blank=True, on_delete=models.CASCADE, related_name="downtimes"
    )
    start = models.DateTimeField()
    end = models.DateTimeField()
    reason = models.CharField(max_length=500, blank=True)
    declared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-start", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(pool__isnull=False) & Q(center__isnull=True))
                | (Q(pool__isnull=True) & Q(center__isnull=False)),
                name="downtime_pool_xor_center",
                violation_error_message="A downtime concerns either one pool or one center.",
            ),
            models.CheckConstraint(
                condition=Q(end__gt=F("start")),
                name="downtime_end_after_start",
                violation_error_message="A downtime must end after it starts.",
            ),
        ]

    def __str__(self) -> str:
        return f"downtime {self.start:%Y-%m-%d %H:%M} - {self.end:%Y-%m-%d %H:%M}"

    def clean(self) -> None:
        # The database constraint is the backstop; this puts the message on the field.
        if self.start and self.end and self.end <= self.start:
            raise ValidationError({"end": ["A downtime must end after it starts."]})

    @property
    def national_id(self) -> str:
        """The identifier of what is down (pool or center)."""
        target = self.pool or self.center
        return target.national_id if target else ""

    @property
    def change_log_owner(self) -> object:
        """The tenant whose change log shows this downtime: the operator of what is down."""
        if self.pool is not None:
            return self.pool.center.operator
        return self.center.operator if self.center is not None else None
