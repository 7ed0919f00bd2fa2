"""Declared state sets of the registry, with their allowed transitions.

``ALLOWED_TRANSITIONS`` is the single table that says which lifecycle moves exist;
``registry.services.lifecycle_transition`` is the single writer of ``status`` and consults it.
"""

from django.db import models


class Region(models.TextChoices):
    """East holds data and demand; west holds cheap, often green power."""

    EAST = "east", "East"
    WEST = "west", "West"


class OrgKind(models.TextChoices):
    OPERATOR = "operator", "Center operator"
    AI_FIRM = "ai_firm", "AI firm"
    PLATFORM = "platform", "Platform"


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    MEMBER = "member", "Member"


class Origin(models.TextChoices):
    DOMESTIC = "domestic", "Domestic"
    IMPORTED = "imported", "Imported"


class Door(models.TextChoices):
    """Through which door a change entered the system."""

    PORTAL = "portal", "Portal"
    API = "api", "REST API"
    AGENT = "agent", "Site agent"
    WORKER = "worker", "Celery worker"
    BROKER = "broker", "gRPC broker"
    CLI = "cli", "Command line"


class LinkSource(models.TextChoices):
    DECLARED = "declared", "Declared"
    MEASURED = "measured", "Measured"


class Status(models.TextChoices):
    """Lifecycle of a center or a pool.

    ``draft -> submitted -> verifying -> active <-> degraded -> offline``; ``failed`` when
    verification refutes the declaration; ``suspended`` by the platform; ``retired`` for good.
    """

    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted"
    VERIFYING = "verifying", "Verifying"
    ACTIVE = "active", "Active"
    DEGRADED = "degraded", "Degraded"
    OFFLINE = "offline", "Offline"
    FAILED = "failed", "Failed"
    SUSPENDED = "suspended", "Suspended"
    RETIRED = "retired", "Retired"


S = Status
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.DRAFT: frozenset({S.SUBMITTED, S.RETIRED}),
    S.SUBMITTED: frozenset({S.DRAFT, S.VERIFYING, S.FAILED, S.SUSPENDED, S.RETIRED}),
    S.VERIFYING: frozenset({S.ACTIVE, S.FAILED, S.SUBMITTED, S.SUSPENDED, S.RETIRED}),
    # An active pool is re-verified in place (it stays bookable); a refuted re-verification
    # moves it straight to failed.
    S.ACTIVE: frozenset({S.DEGRADED, S.OFFLINE, S.FAILED, S.SUSPENDED, S.RETIRED}),
    S.DEGRADED: frozenset({S.ACTIVE, S.OFFLINE, S.FAILED, S.SUSPENDED, S.RETIRED}),
    # A verdict may land while the pool is offline (its agent stopped heartbeating when the
    # verifier knocked): a refuted one fails it all the same.
    S.OFFLINE: frozenset({S.ACTIVE, S.DEGRADED, S.SUBMITTED, S.FAILED, S.SUSPENDED, S.RETIRED}),
    S.FAILED: frozenset({S.DRAFT, S.SUBMITTED, S.RETIRED}),
    S.SUSPENDED: frozenset({S.SUBMITTED, S.RETIRED}),
    S.RETIRED: frozenset(),
}

# Moves an operator may ask for on its own objects; the rest belong to the platform's
# verification and tracking (worker) or to platform staff (suspend).
OPERATOR_TRANSITIONS: frozenset[tuple[str, str]] = frozenset(
    {
        (S.DRAFT, S.SUBMITTED),
        (S.FAILED, S.SUBMITTED),
        (S.FAILED, S.DRAFT),
        (S.SUBMITTED, S.DRAFT),
        (S.OFFLINE, S.SUBMITTED),
    }
    | {(s, S.RETIRED) for s in S.values if s != S.RETIRED}
)

# The reason prefix of an operator's move that takes a pool out of verification (retired, or
# withdrawn to draft) while one of its runs is open: counted as a failure by the resubmission
# cool-down (``registry.selectors.resubmit_cooldown``), whatever the run's verdict turns out to be.
ABANDONED_REASON = "left verification with a run open"

# States seen by everyone (AI firms, the public); the rest only by the owner and the platform.
LISTED_STATUSES: frozenset[str] = frozenset({S.ACTIVE, S.DEGRADED, S.OFFLINE})
# States in which declared hardware may still be edited without a new verification.
EDITABLE_STATUSES: frozenset[str] = frozenset({S.DRAFT, S.FAILED, S.SUBMITTED})

# Portal colours (Bootstrap-like names), as NetBox does for its status choices.
STATUS_COLORS: dict[str, str] = {
    S.DRAFT: "gray",
    S.SUBMITTED: "blue",
    S.VERIFYING: "indigo",
    S.ACTIVE: "green",
    S.DEGRADED: "orange",
    S.OFFLINE: "red",
    S.FAILED: "red",
    S.SUSPENDED: "purple",
    S.RETIRED: "black",
}


class Precision(models.TextChoices):
    """The arithmetic a pool's declared throughput is about; verification challenges in it."""

    BF16 = "bf16", "BF16 inputs, FP32 accumulation (tensor cores)"
    FP16 = "fp16", "FP16 inputs, FP32 accumulation (tensor cores)"
    FP32 = "fp32", "FP32"
    FP64 = "fp64", "FP64"


class ChangeAction(models.TextChoices):
    CREATE = "create", "Created"
    UPDATE = "update", "Updated"
    DELETE = "delete", "Deleted"
    TRANSITION = "transition", "Status changed"
