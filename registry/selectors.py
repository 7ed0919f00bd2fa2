"""Reads that carry a rule. Tenancy is decided here and nowhere else.

Every door (REST viewsets, portal views, gRPC servicers, tasks) asks these selectors what a user
may see or change. An object outside the result is answered as "not found", never "forbidden",
so that its existence does not leak.
"""

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, F, FloatField, Q, QuerySet, Sum, Value
from django.db.models.functions import Coalesce

from registry.actors import Actor, signed_in
from registry.choices import ABANDONED_REASON, LISTED_STATUSES, OrgKind, Role, Status
from registry.models import (
    A100_BF16_DENSE_TFLOPS,
    ApiToken,
    Center,
    ChangeRecord,
    Hub,
    LifecycleTransition,
    Membership,
    Organization,
    Pool,
    WebhookDelivery,
    WebhookSubscription,
)


def organization_of(user: Actor | None) -> Organization | None:
    """The organization a user acts for, or None (anonymous, or no membership)."""
    if user is None or isinstance(user, AnonymousUser) or not user.is_authenticated:
        return None
    try:
        organization: Organization = user.membership.organization
    except Membership.DoesNotExist:
        return None
    return organization


def role_of(user: Actor | None) -> str | None:
    if organization_of(user) is None or not isinstance(user, User):
        return None
    role: str = user.membership.role
    return role


def is_platform_staff(user: Actor | None) -> bool:
    org = organization_of(user)
    return bool(org and org.kind == OrgKind.PLATFORM) or bool(getattr(user, "is_superuser", False))


def can_operate(user: Actor | None) -> bool:
    """Operators (any role) and platform staff may register centers and pools."""
    org = organization_of(user)
    return org is not None and org.kind in (OrgKind.OPERATOR, OrgKind.PLATFORM)


def is_org_admin(user: Actor | None) -> bool:
    return role_of(user) == Role.ADMIN or is_platform_staff(user)


def centers_visible_to(user: Actor | None) -> QuerySet[Center]:
    """Listed centers for everyone; the operator's own in any state; all for the platform."""
    qs = Center.objects.select_related("operator", "cluster__hub")
    if is_platform_staff(user):
        return qs
    listed = Q(status__in=LISTED_STATUSES)
    org = organization_of(user)
    return qs.filter(listed | Q(operator=org)) if org else qs.filter(listed)


def centers_editable_by(user: Actor | None) -> QuerySet[Center]:
    qs = Center.objects.select_related("operator", "cluster__hub")
    if is_platform_staff(user):
        return qs
    if not can_operate(user):
        return qs.none()
    return qs.filter(operator=organization_of(user))


def pools_visible_to(user: Actor | None) -> QuerySet[Pool]:
    """Listed pools (in listed centers) for everyone; own pools in any state; all for staff."""
    qs = Pool.objects.select_related("center__operator", "center__cluster__hub", "accelerator")
    if is_platform_staff(user):
        return qs
    listed = Q(status__in=LISTED_STATUSES, center__status__in=LISTED_STATUSES)
    org = organization_of(user)
    return qs.filter(listed | Q(center__operator=org)) if org else qs.filter(listed)


def pools_editable_by(user: Actor | None) -> QuerySet[Pool]:
    qs = Pool.objects.select_related("center__operator", "center__cluster__hub", "accelerator")
    if is_platform_staff(user):
        return qs
    if not can_operate(user):
        return qs.none()
    return qs.filter(center__operator=organization_of(user))


@dataclass(frozen=True)
class Cooldown:
    """Why and until when no pool of a center may be submitted after failed verifications."""

    failures: int  # the center's failures within ``VERIFICATION_RESUBMIT_WINDOW_DAYS``
    last_failure: dt.datetime
    seconds: int  # the cool-down after the last one
    allowed_at: dt.datetime

    def message(self) -> str:
        days = settings.VERIFICATION_RESUBMIT_WINDOW_DAYS
        times = "once" if self.failures == 1 else f"{self.failures} times"
        return (
            f"Verification of pools of this center failed {times} in the last {days} days; its "
            f"pools may be submitted again from {self.allowed_at:%Y-%m-%d %H:%M:%S} UTC (a "
            f"cool-down of {_duration(self.seconds)} after the last failure, doubled with each "
            f"failure)."
        )


def _duration(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def resubmit_cooldown(pool: Pool, now: dt.datetime) -> Cooldown | None:
    """The cool-down that keeps ``pool`` from being submitted at ``now``, or None.

    Failures are counted per center, over all its pools (retired ones included), since the same
    hardware can be declared again as a new pool: a move of one of them to ``failed``, or an
    operator's move that took one out of verification with a run open (``ABANDONED_REASON``),
    on the transition log. Each failure within ``VERIFICATION_RESUBMIT_WINDOW_DAYS`` doubles the
    wait after the center's last one, starting at ``VERIFICATION_RESUBMIT_COOLDOWN`` seconds, at
    most ``VERIFICATION_RESUBMIT_COOLDOWN_MAX``.
    """
    base = int(settings.VERIFICATION_RESUBMIT_COOLDOWN)
    if base <= 0:
        return None
    since = now - dt.timedelta(days=settings.VERIFICATION_RESUBMIT_WINDOW_DAYS)
    pools = Pool.objects.filter(center_id=pool.center_id).values_list("pk", flat=True)
    failures = list(
        LifecycleTransition.objects.filter(
            Q(to_status=Status.FAILED)
            | Q(
                to_status__in=[Status.RETIRED, Status.DRAFT],
                reason__startswith=ABANDONED_REASON,
            ),
            object_type=Pool._meta.label_lower,
            object_id__in=pools,
            time__gte=since,
        )
        .order_by("-time")
        .values_list("time", flat=True)[:64]
    )
    if not failures:
        return None
    seconds = min(base * 2 ** (len(failures) - 1), int(settings.VERIFICATION_RESUBMIT_COOLDOWN_MAX))
    allowed_at = failures[0] + dt.timedelta(seconds=seconds)
    if now >= allowed_at:
        return None
    return Cooldown(len(failures), failures[0], seconds, allowed_at)


def organizations_visible_to(user: Actor | None) -> QuerySet[Organization]:
    if is_platform_staff(user):
        return Organization.objects.all()
    org = organization_of(user)
    return Organization.objects.filter(pk=org.pk) if org else Organization.objects.none()


def changes_visible_to(user: Actor | None) -> QuerySet[ChangeRecord]:
    qs = ChangeRecord.objects.select_related("actor")
    if is_platform_staff(user):
        return qs
    org = organization_of(user)
    return qs.filter(owner=org) if org else qs.none()


def tokens_of(user: Actor | None) -> QuerySet[ApiToken]:
    owner = signed_in(user)
    if owner is None:
        return ApiToken.objects.none()
    return ApiToken.objects.filter(user=owner)


def _capacity_by(field: str, listed: QuerySet[Pool]) -> list[dict[str, Any]]:
    """Accelerators, A100-equivalents and the verified share grouped by one field."""
    active = Q(status=Status.ACTIVE)
    per_acc = tflops_per_accelerator()
    rows = (
        listed.values(field)
        .annotate(
            n_pools=Count("id"),
            n_accelerators=Coalesce(Sum("accelerators"), 0),
            n_verified=Coalesce(Sum("accelerators", filter=active), 0),
            tflops=Coalesce(
                Sum(F("accelerators") * per_acc, output_field=FloatField()), Value(0.0)
            ),
        )
        .order_by(field)
    )
    out = []
    for agg in rows:
        # Annotation names differ from model fields ("accelerators" is a column).
        row = {
            field: agg[field],
            "pools": agg["n_pools"],
            "accelerators": agg["n_accelerators"],
            "verified_accelerators": agg["n_verified"],
            "a100_equivalents": round(agg["tflops"] / A100_BF16_DENSE_TFLOPS, 1),
        }
        row["verified_share"] = (
            round(row["verified_accelerators"] / row["accelerators"], 4)
            if row["accelerators"]
            else 0.0
        )
        out.append(row)
    return out


def national_summary() -> dict[str, Any]:
    """Registered capacity by hub, accelerator model and vendor origin, and how much is verified.

    Counts every pool that has been submitted (not drafts, not retired), so that "share
    verified" compares verified capacity with everything declared to the platform.
    """
    declared = Pool.objects.exclude(status__in=[Status.DRAFT, Status.RETIRED])
    agg = declared.aggregate(
        n_pools=Count("id"),
        n_accelerators=Coalesce(Sum("accelerators"), 0),
        n_verified=Coalesce(Sum("accelerators", filter=Q(status=Status.ACTIVE)), 0),
    )
    totals: dict[str, Any] = {
        "pools": agg["n_pools"],
        "accelerators": agg["n_accelerators"],
        "verified_accelerators": agg["n_verified"],
    }
    totals["verified_share"] = (
        round(totals["verified_accelerators"] / totals["accelerators"], 4)
        if totals["accelerators"]
        else 0.0
    )
    hub_names = dict(Hub.objects.values_list("code", "name"))
    by_hub = _capacity_by("center__cluster__hub__code", declared)
    for row in by_hub:
        row["hub"] = row.pop("center__cluster__hub__code")
        row["hub_name"] = hub_names.get(row["hub"], row["hub"])
    by_model = _capacity_by("accelerator__slug", declared)
    for row in by_model:
        row["accelerator"] = row.pop("accelerator__slug")
    by_origin = _capacity_by("accelerator__origin", declared)
    for row in by_origin:
        row["origin"] = row.pop("accelerator__origin")
    return {
        "totals": totals,
        "centers": Center.objects.exclude(status__in=[Status.DRAFT, Status.RETIRED]).count(),
        "by_hub": by_hub,
        "by_accelerator": by_model,
        "by_origin": by_origin,
    }


# --- Portal reads -----------------------------------------------------------------------------


def tflops_per_accelerator() -> Coalesce:
    """Throughput one accelerator of a pool counts for (``registry.queries.TFLOPS_RULE``)."""
    from registry.queries import tflops_expression

    return tflops_expression()


def pools_with_a100_equivalents(qs: QuerySet[Pool]) -> QuerySet[Pool]:
    """Annotate ``a100_eq`` (the pool's capacity in A100-equivalents) so that searches can filter
    and sort by it in the database."""
    return qs.annotate(
        a100_eq=F("accelerators") * tflops_per_accelerator() / Value(A100_BF16_DENSE_TFLOPS)
    )


def national_capacity() -> dict[str, Any]:
    """``national_summary``'s figures (same counting: every pool declared to the platform, not
    drafts, not retired) plus capacity by cluster, from ONE grouped query.

    The database groups the declared pools by (cluster, accelerator model), a few hundred rows
    at most whatever the number of pools; hubs, models, origins and totals are sums of those
    rows. At 100,000 pools this is one scan instead of five (the national dashboard's budget).
    """
    from registry.models import Accelerator, Cluster

    declared = Pool.objects.exclude(status__in=[Status.DRAFT, Status.RETIRED])
    cells = declared.values("center__cluster_id", "accelerator_id").annotate(
        n_pools=Count("id"),
        n_accelerators=Coalesce(Sum("accelerators"), 0),
        n_verified=Coalesce(Sum("accelerators", filter=Q(status=Status.ACTIVE)), 0),
        tflops=Coalesce(
            Sum(F("accelerators") * tflops_per_accelerator(), output_field=FloatField()),
            Value(0.0),
        ),
    )
    clusters = {c.pk: c for c in Cluster.objects.select_related("hub")}
    accelerators = {a.pk: a for a in Accelerator.objects.all()}
    groups: dict[str, dict[str, dict[str, float]]] = {
        "hub": {},
        "cluster": {},
        "accelerator": {},
        "origin": {},
        "total": {},
    }
    for cell in cells:
        cluster = clusters[cell["center__cluster_id"]]
        accelerator = accelerators[cell["accelerator_id"]]
        keys = {
            "hub": cluster.hub.code,
            "cluster": cluster.code,
            "accelerator": accelerator.slug,
            "origin": accelerator.origin,
            "total": "",
        }
        for group, key in keys.items():
            acc = groups[group].setdefault(
                key, {"pools": 0, "accelerators": 0, "verified_accelerators": 0, "tflops": 0.0}
            )
            acc["pools"] += cell["n_pools"]
            acc["accelerators"] += cell["n_accelerators"]
            acc["verified_accelerators"] += cell["n_verified"]
            acc["tflops"] += cell["tflops"]

    def rows(group: str) -> list[dict[str, Any]]:
        out = []
        for key in sorted(groups[group]):
            acc = groups[group][key]
            out.append(
                {
                    group: key,
                    "pools": acc["pools"],
                    "accelerators": acc["accelerators"],
                    "verified_accelerators": acc["verified_accelerators"],
                    "a100_equivalents": round(acc["tflops"] / A100_BF16_DENSE_TFLOPS, 1),
                    "verified_share": round(acc["verified_accelerators"] / acc["accelerators"], 4)
                    if acc["accelerators"]
                    else 0.0,
                }
            )
        return out

    total = (rows("total") or [{"pools": 0, "accelerators": 0, "verified_accelerators": 0}])[0]
    hub_names = {c.hub.code: c.hub.name for c in clusters.values()}
    by_hub = rows("hub")
    for row in by_hub:
        row["hub_name"] = hub_names.get(row["hub"], row["hub"])
    return {
        "totals": {
            "pools": total["pools"],
            "accelerators": total["accelerators"],
            "verified_accelerators": total["verified_accelerators"],
            "verified_share": total.get("verified_share", 0.0),
        },
        "centers": Center.objects.exclude(status__in=[Status.DRAFT, Status.RETIRED]).count(),
        "by_hub": by_hub,
        "by_cluster": rows("cluster"),
        "by_accelerator": rows("accelerator"),
        "by_origin": rows("origin"),
    }


def members_of(user: Actor | None) -> QuerySet[Membership]:
    """The members of the user's organization (nobody's for a user without one)."""
    org = organization_of(user)
    if org is None:
        return Membership.objects.none()
    return Membership.objects.filter(organization=org).select_related("user")


def webhooks_of(user: Actor | None) -> QuerySet[WebhookSubscription]:
    org = organization_of(user)
    return (
        WebhookSubscription.objects.filter(organization=org)
        if org
        else WebhookSubscription.objects.none()
    )


def webhook_deliveries_of(user: Actor | None) -> QuerySet[WebhookDelivery]:
    org = organization_of(user)
    if org is None:
        return WebhookDelivery.objects.none()
    return WebhookDelivery.objects.filter(subscription__organization=org)
