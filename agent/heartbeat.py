"""Heartbeats: the agent tells the platform's Telemetry service it is alive and how busy it is.

A background thread sends one SendHeartbeat right away and then one every interval. A failed
send is logged and retried at the next tick: the platform's sweeper, not the agent, decides what
silence means. The channel is created inside the thread, never at import time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from agent import __version__
from agent.config import AgentConfig
from agent.workloads import WorkloadRunner
from protos import agent_pb2, agent_pb2_grpc
from rpckit.tls import PLATFORM_DNS_NAME, CertFiles, TlsError, channel_credentials, name_options

logger = logging.getLogger(__name__)


def build_heartbeat(
    config: AgentConfig, workloads: WorkloadRunner, now: datetime | None = None
) -> agent_pb2.SendHeartbeatRequest:
    """The heartbeat for the agent's current state: per pool, busy and healthy accelerators."""
    sent_at = Timestamp()
    sent_at.FromDatetime(now or datetime.now(UTC))
    pools = []
    for pool in config.pools:
        # The runner says what is healthy: all of it in-process, the usable nodes' GPUs in Slurm.
        healthy = workloads.healthy(pool.key)
        busy = min(workloads.busy(pool.key), healthy)
        pools.append(
            agent_pb2.PoolHeartbeat(
                pool_national_id=pool.national_id,
                pool_key=pool.key,
                utilization=busy / pool.accelerators,
                accelerators_healthy=healthy,
                accelerators_busy=busy,
            )
        )
    return agent_pb2.SendHeartbeatRequest(
        agent_id=config.agent_id,
        center_national_id=config.center.national_id,
        pools=pools,
        sent_at=sent_at,
        agent_version=__version__,
    )


class HeartbeatSender:
    """Sends heartbeats from a daemon thread until :meth:`stop` is called."""

    def __init__(
        self,
        config: AgentConfig,
        workloads: WorkloadRunner,
        *,
        channel_factory: Callable[[str], grpc.Channel] | None = None,
    ) -> None:
        if not config.heartbeat.enabled:
            raise ValueError("heartbeats need both a platform address and a token")
        self.config = config
        self.workloads = workloads
        self.interval = config.heartbeat.interval_seconds
        self.sent = 0  # successful sends, for logs and tests
        self.failed = 0  # refused or lost sends
        self.connections = 0  # channels made (one more after each certificate renewal)
        self._channel_factory = channel_factory or self._default_channel
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"heartbeat-{config.agent_id}", daemon=True
        )

    def start(self) -> None:
        """Start the sending thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait for it."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _default_channel(self, target: str) -> grpc.Channel:
        if self.config.tls_dir:
            # Mutual TLS: present the agent's certificate, accept only the platform's.
            return grpc.secure_channel(
                target,
                channel_credentials(CertFiles.in_dir(self.config.tls_dir, "agent")),
                options=name_options(PLATFORM_DNS_NAME),
            )
        if self.config.heartbeat.tls:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials())
        return grpc.insecure_channel(target)

    def _files_stamp(self) -> tuple[tuple[int, int], ...]:
        if not self.config.tls_dir:
            return ()
        try:
            return CertFiles.in_dir(self.config.tls_dir, "agent").stamp()
        except OSError:
            return ()

    def _loop(self) -> None:
        heartbeat = self.config.heartbeat
        metadata = (("authorization", f"Bearer {heartbeat.token}"),)
        channel: grpc.Channel | None = None
        stamp = self._files_stamp()
        try:
            while not self._stopping.is_set():
                # A renewed certificate is used from the next heartbeat on: a new channel
                # between two calls, so no heartbeat is lost to the rotation.
                current = self._files_stamp()
                if channel is None or current != stamp:
                    if channel is not None:
                        channel.close()
                        logger.info("certificate files changed: reconnecting with them")
                    channel, stamp = None, current
                    try:
                        channel = self._channel_factory(heartbeat.platform)
                        self.connections += 1
                    except TlsError as exc:
                        logger.error("heartbeats cannot be sent: %s", exc)
                if channel is not None:
                    self._send(channel, metadata)
                self._stopping.wait(self.interval)
        finally:
            if channel is not None:
                channel.close()

    def _send(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        try:
            response = agent_pb2_grpc.TelemetryStub(channel).SendHeartbeat(
                build_heartbeat(self.config, self.workloads),
                metadata=metadata,
                # Sequential calls: a slow answer delays the next beat, it never overlaps it.
                timeout=min(max(self.interval, 2.0), 10.0),
            )
        except grpc.RpcError as exc:
            self.failed += 1
            logger.warning(
                "heartbeat to %s failed: %s %s",
                self.config.heartbeat.platform,
                exc.code(),
                exc.details(),
            )
        else:
            self.sent += 1
            # The platform may slow agents down (or speed them up) under load.
            if response.next_interval_seconds > 0:
                self.interval = response.next_interval_seconds
