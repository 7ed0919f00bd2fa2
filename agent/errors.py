"""Errors the agent raises in its domain code.

Each names its entry of the error catalog (``protos.errors``), which holds the gRPC status it
is answered with; ``agent.server.rpc_errors`` is the one place that turns them into statuses, so
domain code never touches a gRPC context.
"""

from __future__ import annotations

from protos.errors import ERRORS, Catalogued


class AgentError(Catalogued, Exception):
    """A request the agent refuses or cannot serve; ``spec`` says the gRPC status to return."""

    spec = ERRORS["internal"]


class InvalidArgument(AgentError):
    """The request is malformed (``field`` names the offending request field)."""

    spec = ERRORS["invalid"]

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(AgentError):
    """The request names a pool or workload this agent does not know."""

    spec = ERRORS["not_found"]


class Unavailable(AgentError):
    """The agent cannot serve right now; the caller should retry (transient)."""

    spec = ERRORS["unavailable"]


class FailedPrecondition(AgentError):
    """The request is valid but the agent's state does not allow it yet (or any more)."""

    spec = ERRORS["failed_precondition"]


class ResourceExhausted(AgentError):
    """The request would need more memory or time than the agent's limits allow."""

    spec = ERRORS["resource_exhausted"]
