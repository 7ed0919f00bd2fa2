"""Load the national hubs, clusters, hub links, traits and the accelerator catalog.

Idempotent: running it again updates the rows in place and never duplicates them. Measured link
figures are never overwritten by declared ones.
"""

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from registry.choices import LinkSource
from registry.data.accelerators import ACCELERATORS
from registry.data.topology import CLUSTERS, HUBS, declared_link
from registry.models import Accelerator, Cluster, Hub, HubLink, Trait

TRAITS = {
    "nvlink": "Accelerators in a node are joined by NVLink/NVSwitch",
    "hccs": "Huawei HCCS links between accelerators in a node",
    "rdma": "RDMA networking between nodes (InfiniBand or RoCE)",
    "infiniband": "InfiniBand between nodes",
    "roce": "RDMA over Converged Ethernet between nodes",
    "fp8": "Hardware FP8 support",
    "liquid-cooling": "Liquid-cooled racks",
    "green-power": "Majority renewable power",
}


class Command(BaseCommand):
    help = "Load the 8 hubs, 10 clusters, hub links, traits and accelerator catalog (idempotent)."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        hubs = {}
        for hub_row in HUBS:
            hub, _ = Hub.objects.update_or_create(
                code=hub_row["code"], defaults={k: v for k, v in hub_row.items() if k != "code"}
            )
            hubs[hub.code] = hub
        for cluster_row in CLUSTERS:
            fields = {k: v for k, v in cluster_row.items() if k not in ("code", "hub")}
            Cluster.objects.update_or_create(
                code=cluster_row["code"], defaults={**fields, "hub": hubs[cluster_row["hub"]]}
            )
        by_code = {hub_row["code"]: hub_row for hub_row in HUBS}
        codes = sorted(by_code)
        for i, a in enumerate(codes):
            for b in codes[i + 1 :]:
                latency, bandwidth = declared_link(by_code[a], by_code[b])
                link, created = HubLink.objects.get_or_create(
                    a=hubs[a],
                    b=hubs[b],
                    defaults={"latency_ms": latency, "bandwidth_gbps": bandwidth},
                )
                if not created and link.source == LinkSource.DECLARED:
                    link.latency_ms, link.bandwidth_gbps = latency, bandwidth
                    link.save(update_fields=["latency_ms", "bandwidth_gbps"])
        for slug, description in TRAITS.items():
            Trait.objects.update_or_create(slug=slug, defaults={"description": description})
        for row in ACCELERATORS:
            data = {k: v for k, v in row.items() if k != "slug"}
            data["interconnect"] = data.get("interconnect") or ""
            data["notes"] = data.get("notes") or ""
            Accelerator.objects.update_or_create(slug=row["slug"], defaults=data)
        self.stdout.write(
            self.style.SUCCESS(
                f"{Hub.objects.count()} hubs, {Cluster.objects.count()} clusters, "
                f"{HubLink.objects.count()} links, {Accelerator.objects.count()} accelerators"
            )
        )
