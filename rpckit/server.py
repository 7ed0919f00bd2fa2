"""The one way every gRPC server of the project is built, started and stopped.

``build_server`` serves the given services with the standard health service (``""`` and each
service SERVING) and server reflection, explicit message limits, the caller's interceptors, an
optional cap on calls in flight, and plaintext, TLS or mutual TLS credentials that reload renewed
certificate files (:mod:`rpckit.tls`). ``Runtime.stop`` is the graceful stop: NOT_SERVING first
(load balancers drain), new calls refused, in-flight ones given ``grace`` seconds, then the
owner's ``on_stopped`` callbacks.

Used by the telemetry server (``verification/rpc/telemetry.py``) and the site agent
(``agent/server.py``). The broker (``brokers/rpc/server.py``) is a ``grpc.aio`` server:
``rpckit.aio.build_aio_server`` builds it from the same pieces (``server_options``, ``bind``,
``reflected``), with the same health, limits, interceptors and graceful stop. No Django.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rpckit.tls import CertFiles, ReloadingServerCredentials

logger = logging.getLogger(__name__)

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class Service:
    """A servicer and the generated function that adds it to a server."""

    name: str  # full name, e.g. interconnect.broker.v1.Broker
    add: Callable[[Any, grpc.Server], None]
    servicer: Any


@dataclass(frozen=True)
class ServerTls:
    """TLS for a server: its certificate files; ``require_client_auth`` for mutual TLS (the
    caller must present a certificate of the authority in ``files.ca``)."""

    files: CertFiles
    require_client_auth: bool = False


@dataclass
class Runtime:
    """A started server and what its owner needs to stop it gracefully."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    grace_seconds: float = 5.0
    credentials: ReloadingServerCredentials | None = None
    on_stopped: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, grace: float | None = None) -> threading.Event:
        """NOT_SERVING, refuse new calls, let in-flight ones finish for ``grace`` seconds;
        returns the event set once the server has stopped and the ``on_stopped`` callbacks
        ran (several servers stop in parallel)."""
        self.health.enter_graceful_shutdown()
        stopped = self.server.stop(self.grace_seconds if grace is None else grace)
        if not self.on_stopped:
            return stopped
        done = threading.Event()
        threading.Thread(target=self._after, args=(stopped, done), daemon=True).start()
        return done

    def _after(self, stopped: threading.Event, done: threading.Event) -> None:
        stopped.wait()
        try:
            for callback in self.on_stopped:
                callback()
        finally:
            done.set()


def server_options(max_message_bytes: int, reuse_port: bool) -> list[tuple[str, int]]:
    """The channel options of every server: explicit message limits both ways (gRPC's default
    receive limit is implicit) and whether several processes may share the port."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
    ]


def reflected(services: Sequence[Service]) -> tuple[str, ...]:
    """The service names server reflection lists: the given ones, health and reflection."""
    return (*(s.name for s in services), HEALTH_SERVICE, reflection.SERVICE_NAME)


def bind(
    server: grpc.Server | grpc.aio.Server, address: str, *, name: str, tls: ServerTls | None
) -> tuple[int, ReloadingServerCredentials | None]:
    """Add the listening port (plaintext, TLS or mutual TLS with reloading credentials) and
    return it with the credentials; ``OSError`` when the address cannot be bound."""
    credentials = None
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        credentials = ReloadingServerCredentials(
            tls.files, require_client_auth=tls.require_client_auth
        )
        port = server.add_secure_port(address, credentials.credentials)
    if port == 0:
        raise OSError(f"cannot bind the {name} gRPC server to {address}")
    return port, credentials


def log_listening(name: str, port: int, tls: ServerTls | None) -> None:
    mode = "plaintext" if tls is None else ("mutual TLS" if tls.require_client_auth else "TLS")
    logger.info("%s listening on port %d (%s)", name, port, mode)


def build_server(
    address: str,
    *,
    name: str,
    services: Sequence[Service],
    max_workers: int,
    max_message_bytes: int,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    maximum_concurrent_rpcs: int | None = None,
    reuse_port: bool = False,
    tls: ServerTls | None = None,
    health_servicer: health.HealthServicer | None = None,
    grace_seconds: float = 5.0,
) -> Runtime:
    """Build and start a server on ``address`` (port 0 picks a free port)."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name),
        interceptors=list(interceptors),
        options=server_options(max_message_bytes, reuse_port),
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    for service in services:
        service.add(service.servicer, server)
    health_servicer = health_servicer or health.HealthServicer(
        experimental_non_blocking=True,
        experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service_name in ("", *(s.name for s in services)):  # "" is the whole server
        health_servicer.set(service_name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(reflected(services), server)
    port, credentials = bind(server, address, name=name, tls=tls)
    server.start()
    log_listening(name, port, tls)
    return Runtime(
        server=server,
        port=port,
        health=health_servicer,
        grace_seconds=grace_seconds,
        credentials=credentials,
    )
