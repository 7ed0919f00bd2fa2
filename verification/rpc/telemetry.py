"""The platform's ``Telemetry`` gRPC service (``protos/agent.proto``): agents report heartbeats.

The servicer is thin: convert the request into ``PoolBeat``s, call
``verification.services.heartbeat_record``, convert back. The server has the broker's
interceptors (``registry.rpc``, behind ``rpckit.interceptors.MetricsInterceptor``): they
authenticate the bearer token, set the request id and the deadline, and answer every error from
the error catalog (``protos.errors``):

- no or bad token -> UNAUTHENTICATED; a token of a non-operator -> PERMISSION_DENIED;
- a pool that is not the caller's (or does not exist) -> NOT_FOUND;
- bad values -> INVALID_ARGUMENT with ``google.rpc.BadRequest`` field violations;
- anything unexpected -> INTERNAL, logged, without its message.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interconnect.metrics import observe_grpc_call
from protos import agent_pb2, agent_pb2_grpc
from registry import certificates
from registry.rpc import AuthInterceptor, ErrorInterceptor, current_user, refusal
from rpckit.interceptors import MetricsInterceptor
from rpckit.server import Runtime, ServerTls, Service, build_server
from rpckit.tls import CertFiles, center_of, peer_pem
from verification import services

logger = logging.getLogger(__name__)

TELEMETRY_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Where a bad-input message on no field is reported (``registry.rpc.ErrorInterceptor``).
ERROR_FIELD = "request"


def telemetry_interceptors(auth: AuthInterceptor) -> list[grpc.ServerInterceptor]:
    """The server's interceptors, outermost first (the broker's, with this server's field)."""
    return [
        MetricsInterceptor(observe_grpc_call),
        auth,
        ErrorInterceptor(field=ERROR_FIELD, server="telemetry"),
    ]


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
    """Receives agents' heartbeats for the pools their operator owns.

    With ``mutual_tls`` the caller's certificate (checked by the handshake: the platform's
    authority, not expired) must also be known to the registry and not revoked, and the
    heartbeat may only name pools of the center the certificate names. The bearer token stays
    the second factor: the certificate says which center's machine speaks, the token which
    operator account acts (and is revoked alone, at once, when a person leaves).
    """

    def __init__(self, *, mutual_tls: bool = False) -> None:
        self.mutual_tls = mutual_tls

    def _certified_center(self, context: grpc.ServicerContext) -> str | None:
        if not self.mutual_tls:
            return None
        pem = peer_pem(context)
        center = center_of(pem)
        problem = certificates.refusal(pem) if center else "the certificate names no center"
        if problem:
            logger.warning("telemetry refused a certificate: %s", problem)
            context.abort_with_status(refusal("unauthenticated", problem))
        return center

    def SendHeartbeat(
        self, request: agent_pb2.SendHeartbeatRequest, context: grpc.ServicerContext
    ) -> agent_pb2.SendHeartbeatResponse:
        """Record that the agent is alive and how busy each of its pools is (the caller is
        the operator the interceptors authenticated)."""
        certified = self._certified_center(context)
        sent_at = request.sent_at.ToDatetime(tzinfo=UTC) if request.HasField("sent_at") else None
        services.heartbeat_record(
            actor=current_user.get(),
            agent_id=request.agent_id,
            sent_at=sent_at,
            pools=beats_from_pb(request),
            center_national_id=request.center_national_id,
            certified_center=certified,
        )
        received = Timestamp()
        received.FromDatetime(datetime.now(UTC))
        return agent_pb2.SendHeartbeatResponse(received_at=received, next_interval_seconds=0)


def build_telemetry_server(
    address: str, *, max_workers: int = 16, tls_files: CertFiles | None = None
) -> Runtime:
    """Build and start the Telemetry server (health, reflection: ``rpckit.server``; metrics,
    authentication, error mapping: :func:`telemetry_interceptors`).

    With ``tls_files`` (the platform's certificate and the authority's bundle) it speaks mutual
    TLS only: agents present their center's certificate. Without, and with the platform's
    certificate configured (``PLATFORM_TLS_DIR``), it uses those; plaintext otherwise.
    """
    if tls_files is None and certificates.mutual_tls():
        tls_files = certificates.platform_files()
    auth = AuthInterceptor()
    runtime = build_server(
        address,
        name="telemetry",
        services=[
            Service(
                TELEMETRY_SERVICE,
                agent_pb2_grpc.add_TelemetryServicer_to_server,
                TelemetryServicer(mutual_tls=tls_files is not None),
            )
        ],
        max_workers=max_workers,
        max_message_bytes=MAX_MESSAGE_BYTES,
        interceptors=telemetry_interceptors(auth),
        tls=ServerTls(tls_files, require_client_auth=True) if tls_files is not None else None,
    )
    # Once stopped, the handler threads' database connections close.
    runtime.on_stopped.append(auth.connections.close)
    return runtime


def create_telemetry_server(
    address: str, *, max_workers: int = 16, tls_files: CertFiles | None = None
) -> tuple[grpc.Server, int]:
    """Build and start the Telemetry server; returns it and its port (port 0 picks a free
    one). Stop it with :func:`stop_telemetry_server`."""
    runtime = build_telemetry_server(address, max_workers=max_workers, tls_files=tls_files)
    server = runtime.server
    server.runtime = runtime  # type: ignore[attr-defined]
    return server, runtime.port


def stop_telemetry_server(server: Any, grace: float = 5.0) -> None:
    """Report NOT_SERVING, then stop, letting in-flight calls finish for ``grace`` seconds."""
    runtime = getattr(server, "runtime", None)
    if runtime is not None:
        runtime.stop(grace).wait()
    else:
        server.stop(grace).wait()
