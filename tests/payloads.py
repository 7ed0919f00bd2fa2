"""Request bodies shared by registry tests."""

from typing import Any

CENTER_BODY = {
    "name": "Desert DC",
    "cluster": "ZW",
    "latitude": 37.5,
    "longitude": 105.2,
    "pue": 1.15,
    "green_power_share": 0.8,
    "agent_endpoint": "127.0.0.1:50061",
}


def pool_body(center_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "center": center_id,
        "name": "H100 pool",
        "accelerator": "nvidia-h100-sxm",
        "accelerators_per_node": 8,
        "nodes": 4,
        "price_per_accelerator_hour": "12.50",
        "currency": "CNY",
        "declared_tflops_per_accelerator": 989.4,
        "traits": ["nvlink", "rdma"],
        **overrides,
    }
