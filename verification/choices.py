"""Declared state sets of verification: why a run was started and how it ended."""

from django.db import models


class Trigger(models.TextChoices):
    """Why a verification run exists."""

    SUBMITTED = "submitted", "Pool submitted"
    SCHEDULED = "scheduled", "Scheduled re-verification"
    OPERATOR_REQUEST = "operator_request", "Requested by the operator"


class RunState(models.TextChoices):
    """Lifecycle of one verification run.

    ``queued -> running -> passed | failed | error``. A running run whose worker hit a transient
    agent error goes back to ``queued`` for the retry. ``failed`` means the agent's answer refuted
    the declaration; ``error`` means the platform could not get an answer (agent unreachable after
    every retry), which says nothing about the hardware.
    """

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    PASSED = "passed", "Passed"
    FAILED = "failed", "Failed"
    ERROR = "error", "Error"


OPEN_STATES: frozenset[str] = frozenset({RunState.QUEUED, RunState.RUNNING})
FINISHED_STATES: frozenset[str] = frozenset({RunState.PASSED, RunState.FAILED, RunState.ERROR})
