"""Errors the agent raises in its domain code.

Each carries the gRPC status code it maps to; ``agent.server.rpc_errors`` is the one place that
turns them into statuses, so domain code never touches a gRPC context.
"""

from __future__ import annotations

import grpc


class AgentError(Exception):
    """A request the agent refuses or cannot serve; ``code`` is the gRPC status to return."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(AgentError):
    """The request is malformed (``field`` names the offending request field)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class NotFound(AgentError):
    """The request names a pool or workload this agent does not know."""

    code = grpc.StatusCode.NOT_FOUND


class Unavailable(AgentError):
    """The agent cannot serve right now; the caller should retry (transient)."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(AgentError):
    """The request is valid but the agent's state does not allow it yet (or any more)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AgentError):
    """The request would need more memory or time than the agent's limits allow."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
