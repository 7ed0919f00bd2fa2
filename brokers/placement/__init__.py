"""Placement: find pools for a workload, rank them and explain every rejection and the choice.

``spec`` (what is asked), ``candidates`` (the SQL prefilter), ``filters`` and ``scorers`` (small,
each testable alone), ``engine`` (composes them in one place).
"""

from brokers.placement.engine import place
from brokers.placement.spec import (
    Candidate,
    OptionPart,
    PlacementOption,
    PlacementResult,
    Rejection,
    WorkloadSpec,
)

__all__ = [
    "Candidate",
    "OptionPart",
    "PlacementOption",
    "PlacementResult",
    "Rejection",
    "WorkloadSpec",
    "place",
]
