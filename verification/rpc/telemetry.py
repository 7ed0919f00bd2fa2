"""The platform's ``Telemetry`` gRPC service (``protos/agent.proto``): agents report heartbeats.

The servicer is thin: authenticate the bearer token, convert the request into ``PoolBeat``s,
call ``verification.services.heartbeat_record``, convert back. Domain errors become statuses in
one place, :func:`_abort_for`:

- no or bad token -> UNAUTHENTICATED; a token of a non-operator -> PERMISSION_DENIED;
- a pool that is not the caller's (or does not exist) -> NOT_FOUND;
- bad values -> INVALID_ARGUMENT with ``google.rpc.BadRequest`` field violations.
"""

from __future__ import annotations

import logging
from concurrent import futures
from datetime import UTC, datetime
from typing import Any

import grpc
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import close_old_connections
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from protos import agent_pb2, agent_pb2_grpc
from protos.errors import ERRORS
from registry.errors import rpc_status_for
from registry.services import user_for_token
from verification import services
from verification.errors import UnknownPool

logger = logging.getLogger(__name__)

TELEMETRY_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def _abort_for(context: grpc.ServicerContext, exc: Exception) -> None:
    """Abort with the error catalog's status for ``exc`` (INTERNAL, logged, for anything else)."""
    status = rpc_status_for(exc, field="request")
    if status is not None:
        context.abort_with_status(rpc_status.to_status(status))
    logger.exception("Telemetry call failed")
    context.abort(ERRORS["internal"].grpc_code, "internal error")


def _bearer(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def beats_from_pb(request: agent_pb2.SendHeartbeatRequest) -> list[services.PoolBeat]:
    """The heartbeat's pool entries as domain values."""
    return [
        services.PoolBeat(
            national_id=p.pool_national_id,
            utilization=p.utilization,
            accelerators_healthy=p.accelerators_healthy,
            accelerators_busy=p.accelerators_busy,
        )
        for p in request.pools
    ]


class TelemetryServicer(agent_pb2_grpc.TelemetryServicer):
    """Receives agents' heartbeats for the pools their operator owns."""

    def SendHeartbeat(
        self, request: agent_pb2.SendHeartbeatRequest, context: grpc.ServicerContext
    ) -> agent_pb2.SendHeartbeatResponse:
        """Record that the agent is alive and how busy each of its pools is."""
        # gRPC serves calls on pool threads that Django knows nothing about: drop connections
        # that are too old or broken before and after, as Django does around a request.
        close_old_connections()
        try:
            token = _bearer(context)
            user = user_for_token(token) if token else None
            if user is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid bearer token is required")
            sent_at = (
                request.sent_at.ToDatetime(tzinfo=UTC) if request.HasField("sent_at") else None
            )
            try:
                services.heartbeat_record(
                    actor=user,
                    agent_id=request.agent_id,
                    sent_at=sent_at,
                    pools=beats_from_pb(request),
                    center_national_id=request.center_national_id,
                )
            except (ValidationError, UnknownPool, PermissionDenied) as exc:
                _abort_for(context, exc)
            received = Timestamp()
            received.FromDatetime(datetime.now(UTC))
            return agent_pb2.SendHeartbeatResponse(received_at=received, next_interval_seconds=0)
        finally:
            close_old_connections()


def register_telemetry(server: grpc.Server) -> None:
    """Add the Telemetry servicer to a server (ours, or the broker's)."""
    agent_pb2_grpc.add_TelemetryServicer_to_server(TelemetryServicer(), server)


def create_telemetry_server(address: str, *, max_workers: int = 16) -> tuple[grpc.Server, int]:
    """Build and start a server with Telemetry, health and reflection; returns it and its port
    (port 0 picks a free one)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="telemetry"),
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    register_telemetry(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in ("", TELEMETRY_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (
            TELEMETRY_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind the telemetry server to {address}")
    server.start()
    server.health_servicer = health_servicer  # type: ignore[attr-defined]
    return server, port


def stop_telemetry_server(server: Any, grace: float = 5.0) -> None:
    """Report NOT_SERVING, then stop, letting in-flight calls finish for ``grace`` seconds."""
    health_servicer = getattr(server, "health_servicer", None)
    if health_servicer is not None:
        health_servicer.enter_graceful_shutdown()
    server.stop(grace).wait()
