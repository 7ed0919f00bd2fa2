"""Demo tenants, centers and pools for ``make run`` (``manage.py seed_demo``).

Three operators in three western hubs, each with a simulated site agent on a loopback port, two AI
firms in the east, and the platform's own staff. Every demo user has the same password.
"""

from typing import Any

DEMO_PASSWORD = "interconnect-demo"

ORGANIZATIONS: list[dict[str, str]] = [
    {"slug": "interconnect", "name": "Compute Interconnect Platform", "kind": "platform"},
    {"slug": "zhongwei-green", "name": "Zhongwei Green Compute", "kind": "operator"},
    {"slug": "guian-cloud", "name": "Gui'an Cloud Valley", "kind": "operator"},
    {"slug": "horinger-ai", "name": "Horinger AI Park", "kind": "operator"},
    {"slug": "deepcurrent", "name": "DeepCurrent AI", "kind": "ai_firm"},
    {"slug": "lingxi-labs", "name": "Lingxi Labs", "kind": "ai_firm"},
]

USERS: list[dict[str, str]] = [
    {"username": "platform", "org": "interconnect", "role": "admin"},
    {"username": "zhongwei", "org": "zhongwei-green", "role": "admin"},
    {"username": "zhongwei-ops", "org": "zhongwei-green", "role": "member"},
    {"username": "guian", "org": "guian-cloud", "role": "admin"},
    {"username": "horinger", "org": "horinger-ai", "role": "admin"},
    {"username": "deepcurrent", "org": "deepcurrent", "role": "admin"},
    {"username": "lingxi", "org": "lingxi-labs", "role": "admin"},
]

# Each center: its operator, place, agent port and pools (the pool fields of ``pool_create``).
CENTERS: list[dict[str, Any]] = [
    {
        "operator": "zhongwei",
        "cluster": "ZW",
        "name": "Zhongwei Desert Compute Center",
        "latitude": 37.52,
        "longitude": 105.20,
        "pue": 1.12,
        "green_power_share": 0.82,
        "agent_port": 50061,
        "pools": [
            {
                "name": "H800 training pool",
                "accelerator": "nvidia-h800-sxm",
                "accelerators_per_node": 8,
                "nodes": 16,
                "intra_node_interconnect": "NVLink 4",
                "intra_node_bandwidth_gbps": 400,
                "inter_node_interconnect": "InfiniBand NDR",
                "inter_node_bandwidth_gbps": 400,
                "price_per_accelerator_hour": "14.00",
                "currency": "CNY",
                "spot_discount_percent": "30",
                "declared_tflops_per_accelerator": 989.4,
                "traits": ["nvlink", "rdma", "infiniband", "fp8", "green-power", "liquid-cooling"],
            },
        ],
    },
    {
        "operator": "guian",
        "cluster": "GAN",
        "name": "Gui'an Mountain Data Center",
        "latitude": 26.38,
        "longitude": 106.40,
        "pue": 1.20,
        "green_power_share": 0.65,
        "agent_port": 50062,
        "pools": [
            {
                "name": "Ascend 910B pool",
                "accelerator": "huawei-ascend-910b",
                "accelerators_per_node": 8,
                "nodes": 32,
                "intra_node_interconnect": "HCCS",
                "inter_node_interconnect": "RoCE",
                "inter_node_bandwidth_gbps": 200,
                "price_per_accelerator_hour": "8.50",
                "currency": "CNY",
                "spot_discount_percent": "40",
                "declared_tflops_per_accelerator": 280.0,
                # The catalog gives the 910B's FP16 figure only: the declaration is about FP16.
                "declared_precision": "fp16",
                "traits": ["hccs", "rdma", "roce"],
            },
        ],
    },
    {
        "operator": "horinger",
        "cluster": "HRG",
        "name": "Horinger Grassland AI Center",
        "latitude": 40.39,
        "longitude": 111.83,
        "pue": 1.15,
        "green_power_share": 0.74,
        "agent_port": 50063,
        "pools": [
            {
                "name": "A100 pool",
                "accelerator": "nvidia-a100-80g",
                "accelerators_per_node": 8,
                "nodes": 12,
                "intra_node_interconnect": "NVLink 3",
                "intra_node_bandwidth_gbps": 600,
                "inter_node_interconnect": "InfiniBand HDR",
                "inter_node_bandwidth_gbps": 200,
                "price_per_accelerator_hour": "10.00",
                "currency": "CNY",
                "spot_discount_percent": "25",
                "declared_tflops_per_accelerator": 312.0,
                "traits": ["nvlink", "rdma", "infiniband", "green-power"],
            },
        ],
    },
]
