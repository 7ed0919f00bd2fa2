"""Registration: the agent submits its center and pools to the platform's REST API.

Three calls, all with ``Authorization: Bearer TOKEN`` (see :func:`api_post`, the one function that
speaks HTTP, so the endpoint shape is easy to adjust):

1. ``POST /api/v1/centers/``: the center; the answer's ``national_id`` names it from then on.
2. ``POST /api/v1/pools/``: once per pool, with ``center`` set to that national id.
3. ``POST /api/v1/pools/{national_id}/submit/``: asks the platform to verify the pool.

The pools come from the running agent's GetInventory (so what is registered is what the agent
will answer for), or from the local configuration with ``--local``. Price, name and traits are
commercial facts the agent does not know; they come from the config file or flags.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from agent.config import CenterConfig, ConfigError, PoolConfig
from protos import agent_pb2, agent_pb2_grpc

CURRENCY = "CNY"


class ApiError(Exception):
    """The platform answered with an HTTP error; ``body`` is its decoded JSON (or text)."""

    def __init__(self, method: str, url: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {url} returned HTTP {status}")
        self.status = status
        self.body = body


class ApiUnreachable(Exception):
    """The platform could not be reached at all (DNS, refused connection, timeout)."""


@dataclass(frozen=True)
class Registration:
    """What the platform answered: the center's and each pool's national identifier."""

    center_national_id: str
    pool_national_ids: dict[str, str]


def api_post(
    base_url: str, path: str, token: str, payload: Mapping[str, Any] | None, timeout: float = 30.0
) -> dict[str, Any]:
    """POST JSON to the platform's REST API and return the decoded JSON answer."""
    url = base_url.rstrip("/") + path
    request = urllib.request.Request(
        url,
        data=json.dumps(payload or {}).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raw_error = exc.read()
        try:
            body: Any = json.loads(raw_error)
        except ValueError:
            body = raw_error.decode(errors="replace")
        raise ApiError("POST", url, exc.code, body) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiUnreachable(f"cannot reach {url}: {reason}") from None
    decoded = json.loads(raw) if raw else {}
    return decoded if isinstance(decoded, dict) else {"result": decoded}


def field_messages(body: Any, prefix: str = "") -> list[str]:
    """Flatten a DRF error body (``{"field": ["msg", ...], "nested": {...}}``) into lines."""
    if isinstance(body, Mapping):
        lines = []
        for key, value in body.items():
            lines.extend(field_messages(value, f"{prefix}{key}: " if key != "detail" else prefix))
        return lines
    if isinstance(body, list):
        return [line for item in body for line in field_messages(item, prefix)]
    return [f"{prefix}{body}"]


def center_payload(center: CenterConfig, agent_endpoint: str) -> dict[str, Any]:
    """The JSON of POST /centers/; ConfigError if a required fact is missing."""
    missing = [
        name
        for name in ("name", "cluster", "latitude", "longitude", "pue", "green_power_share")
        if getattr(center, name) in (None, "")
    ]
    if missing:
        flags = ", ".join("--" + name.replace("_", "-") for name in missing)
        raise ConfigError(f"center facts missing: {flags} (or [center] in the config file)")
    return {
        "name": center.name,
        "cluster": center.cluster,
        "latitude": center.latitude,
        "longitude": center.longitude,
        "pue": center.pue,
        "green_power_share": center.green_power_share,
        "agent_endpoint": agent_endpoint,
    }


def pool_payload(pool: PoolConfig, center_national_id: str) -> dict[str, Any]:
    """The JSON of POST /pools/ for one pool of a registered center."""
    if pool.price_per_accelerator_hour is None:
        raise ConfigError(
            f"pool {pool.key!r} has no price: pass --price or set price_per_accelerator_hour"
        )
    return {
        "center": center_national_id,
        "name": pool.name or f"{pool.accelerator_model} x{pool.accelerators}",
        "accelerator": pool.accelerator_model,
        "accelerators_per_node": pool.accelerators_per_node,
        "nodes": pool.nodes,
        "intra_node_interconnect": pool.intra_node_interconnect,
        "inter_node_interconnect": pool.inter_node_interconnect,
        "price_per_accelerator_hour": pool.price_per_accelerator_hour,
        "currency": CURRENCY,
        "declared_tflops_per_accelerator": pool.declared_tflops_per_accelerator,
        "declared_precision": pool.declared_precision,
        "traits": list(pool.traits),
    }


def register(
    *,
    platform_url: str,
    token: str,
    center: CenterConfig,
    pools: Sequence[PoolConfig],
    agent_endpoint: str,
) -> Registration:
    """Register the center, each pool, and submit each pool for verification.

    Not transactional across calls: if a pool fails, the center and earlier pools stay
    registered (the error says which call failed; re-running creates a second center, so the
    operator fixes the pool through the portal or API instead).
    """
    if not pools:
        raise ConfigError("the agent reports no pools to register")
    payloads = [pool_payload(pool, "") for pool in pools]  # validate all before the first call
    created = api_post(
        platform_url, "/api/v1/centers/", token, center_payload(center, agent_endpoint)
    )
    center_id = str(created.get("national_id", ""))
    if not center_id:
        raise ApiError("POST", "/api/v1/centers/", 200, {"detail": "no national_id in answer"})
    pool_ids: dict[str, str] = {}
    for pool, payload in zip(pools, payloads, strict=True):
        answer = api_post(platform_url, "/api/v1/pools/", token, {**payload, "center": center_id})
        pool_id = str(answer.get("national_id", ""))
        if not pool_id:
            raise ApiError("POST", "/api/v1/pools/", 200, {"detail": "no national_id in answer"})
        api_post(platform_url, f"/api/v1/pools/{pool_id}/submit/", token, {})
        pool_ids[pool.key] = pool_id
    return Registration(center_national_id=center_id, pool_national_ids=pool_ids)


def pools_from_agent(
    endpoint: str, *, attempts: int = 5, timeout: float = 10.0
) -> tuple[PoolConfig, ...]:
    """Ask the running agent at ``endpoint`` for its pools, retrying transient failures."""
    with grpc.insecure_channel(endpoint) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        for attempt in range(1, attempts + 1):
            try:
                inventory = stub.GetInventory(agent_pb2.GetInventoryRequest(), timeout=timeout)
                break
            except grpc.RpcError as exc:
                code = exc.code()
                if code is not grpc.StatusCode.UNAVAILABLE or attempt == attempts:
                    raise ApiUnreachable(
                        f"agent at {endpoint} did not answer GetInventory: {code.name} "
                        f"{exc.details()}"
                    ) from None
                time.sleep(0.2 * attempt)  # a flaky agent recovers after a few calls
    return tuple(
        PoolConfig(
            key=pool.pool_key,
            accelerator_model=pool.accelerator_model,
            accelerators_per_node=pool.accelerators_per_node,
            nodes=pool.nodes,
            intra_node_interconnect=pool.intra_node_interconnect,
            inter_node_interconnect=pool.inter_node_interconnect,
            declared_tflops_per_accelerator=pool.declared_tflops_per_accelerator,
        )
        for pool in inventory.pools
    )


def with_commercial_terms(
    pools: Iterable[PoolConfig],
    configured: Iterable[PoolConfig],
    *,
    price: float | None,
    traits: Sequence[str],
) -> tuple[PoolConfig, ...]:
    """Add name, price and traits to inventory pools: from the config pool of the same key,
    else from the flags (``--price``, ``--trait``)."""
    by_key = {pool.key: pool for pool in configured}
    result = []
    for pool in pools:
        known = by_key.get(pool.key)
        result.append(
            replace(
                pool,
                name=known.name if known else pool.name,
                price_per_accelerator_hour=(
                    known.price_per_accelerator_hour
                    if known and known.price_per_accelerator_hour is not None
                    else price
                ),
                traits=tuple(dict.fromkeys([*(known.traits if known else ()), *traits])),
            )
        )
    return tuple(result)
