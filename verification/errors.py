"""Errors of verification, classified the way the worker must react to them.

``AgentUnavailable`` is transient (the task retries with backoff); ``VerificationRefuted`` is
permanent (the run ends FAILED with its reason). healthchecks' ``TransportError(permanent=...)``
draws the same line.
"""

from protos.errors import ERRORS, Catalogued


class AgentUnavailable(Exception):
    """The agent could not be reached or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED).

    Says nothing about the hardware: the run is retried, and ends ERROR when retries run out.
    """


class VerificationRefuted(Exception):
    """The agent answered, and the answer refutes the pool's declaration (wrong product, wrong
    inventory, too slow, impossible timing, malformed data). The message is the verdict reason."""


class UnknownPool(Catalogued, Exception):
    """A pool that does not exist or that the caller may not see (answered as not found)."""

    spec = ERRORS["not_found"]

    def __init__(self, national_id: str) -> None:
        super().__init__(f"unknown pool {national_id}")
        self.national_id = national_id
