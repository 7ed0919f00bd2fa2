"""Registry models, split by sub-domain."""

from .catalog import A100_BF16_DENSE_TFLOPS, Accelerator, Trait
from .centers import Center, Pool
from .certificates import AgentCertificate
from .changes import ChangeRecord, LifecycleTransition
from .orgs import ApiToken, Membership, Organization
from .topology import Cluster, Hub, HubLink
from .webhooks import WEBHOOK_EVENTS, WebhookDelivery, WebhookSubscription

__all__ = [
    "A100_BF16_DENSE_TFLOPS",
    "WEBHOOK_EVENTS",
    "Accelerator",
    "AgentCertificate",
    "ApiToken",
    "Center",
    "ChangeRecord",
    "Cluster",
    "Hub",
    "HubLink",
    "LifecycleTransition",
    "Membership",
    "Organization",
    "Pool",
    "Trait",
    "WebhookDelivery",
    "WebhookSubscription",
]
