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
        if self.config.heartbeat.tls:
            return grpc.secure_channel(target, grpc.ssl_channel_credentials())
        return grpc.insecure_channel(target)

    def _loop(self) -> None:
        heartbeat = self.config.heartbeat
        metadata = (("authorization", f"Bearer {heartbeat.token}"),)
        with self._channel_factory(heartbeat.platform) as channel:
            stub = agent_pb2_grpc.TelemetryStub(channel)
            while not self._stopping.is_set():
                try:
                    response = stub.SendHeartbeat(
                        build_heartbeat(self.config, self.workloads),
                        metadata=metadata,
                        timeout=min(self.interval, 10.0),
                    )
                except grpc.RpcError as exc:
                    logger.warning(
                        "heartbeat to %s failed: %s %s",
                        heartbeat.platform,
                        exc.code(),
                        exc.details(),
                    )
                else:
                    self.sent += 1
                    # The platform may slow agents down (or speed them up) under load.
                    if response.next_interval_seconds > 0:
                        self.interval = response.next_interval_seconds
                self._stopping.wait(self.interval)
