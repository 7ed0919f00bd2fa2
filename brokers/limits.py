"""The limits of a workload request and their messages, one set for every door.

REST, gRPC, the portal and the ``interconnect`` command line all say exactly these sentences
(``WorkloadSpec.validated`` applies them; the doors that check earlier reuse them). No Django
here: the command-line client imports it too.
"""

from __future__ import annotations

import math

MAX_ACCELERATORS = 100_000
MIN_DURATION_SECONDS = 60.0
MAX_DURATION_SECONDS = 366 * 24 * 3600.0
DEFAULT_DURATION_SECONDS = 3600.0

COUNT_MESSAGE = f"Between 1 and {MAX_ACCELERATORS} accelerators."
A100_EQUIVALENTS_MESSAGE = f"More than 0 and at most {MAX_ACCELERATORS} A100-equivalents."
DURATION_MESSAGE = "Between one minute and one year (366 days)."
NEGATIVE_MESSAGE = "Must not be negative."
AT_LEAST_ONE_MESSAGE = "At least 1."
NO_ZONE_MESSAGE = "Give a time zone (e.g. 2026-12-01T09:00:00Z)."


def count_error(count: int | float) -> str | None:
    """The refusal of an accelerator count, or None."""
    return None if 1 <= count <= MAX_ACCELERATORS else COUNT_MESSAGE


def a100_equivalents_error(value: float) -> str | None:
    ok = math.isfinite(value) and 0 < value <= MAX_ACCELERATORS
    return None if ok else A100_EQUIVALENTS_MESSAGE


def duration_error(seconds: float) -> str | None:
    """The refusal of a duration in seconds (NaN and infinities included), or None."""
    ok = math.isfinite(seconds) and MIN_DURATION_SECONDS <= seconds <= MAX_DURATION_SECONDS
    return None if ok else DURATION_MESSAGE
