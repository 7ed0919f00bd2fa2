"""Every write to the registry goes through a function here.

Services are keyword-only, atomic, take the acting user and the door, validate with the model
(``full_clean`` runs field validators and the database constraints' checks, so every door gets
the same field messages), write the change record, and announce side effects on commit.
"""

import datetime as dt
from decimal import Decimal
from typing import Any, TypeVar

from django.apps import apps
from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models, transaction
from django.utils import timezone

from registry import selectors
from registry.actors import Actor, signed_in
from registry.choices import (
    ABANDONED_REASON,
    ALLOWED_TRANSITIONS,
    EDITABLE_STATUSES,
    OPERATOR_TRANSITIONS,
    ChangeAction,
    Door,
    Role,
    Status,
)
from registry.context import current_request_id
from registry.errors import IllegalTransition, ResubmitTooSoon, StaleVersion
from registry.models import (
    ApiToken,
    Center,
    ChangeRecord,
    Cluster,
    LifecycleTransition,
    Membership,
    Organization,
    Pool,
    Trait,
    WebhookSubscription,
)
from registry.models.orgs import hash_token_secret
from registry.netguard import resolve_public
from registry.signals import pool_submitted, status_changed

_Listed = TypeVar("_Listed", Center, Pool)

# Fields of a pool that describe the hardware: changing them invalidates a verification.
POOL_HARDWARE_FIELDS = frozenset(
    {
        "accelerator",
        "accelerators_per_node",
        "nodes",
        "intra_node_interconnect",
        "intra_node_bandwidth_gbps",
        "inter_node_interconnect",
        "inter_node_bandwidth_gbps",
        "declared_tflops_per_accelerator",
        "declared_precision",
    }
)
CENTER_FIELDS = (
    "cluster",
    "name",
    "latitude",
    "longitude",
    "pue",
    "green_power_share",
    "agent_endpoint",
)
POOL_FIELDS = (
    "name",
    *sorted(POOL_HARDWARE_FIELDS),
    "price_per_accelerator_hour",
    "currency",
    "spot_discount_percent",
)


# --- Change log -------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def snapshot(obj: models.Model) -> dict[str, Any]:
    """The object's concrete fields as JSON-safe values (foreign keys by their id)."""
    data: dict[str, Any] = {}
    for field in obj._meta.concrete_fields:
        if isinstance(field, models.GeneratedField):
            continue
        data[field.attname] = _jsonable(getattr(obj, field.attname))
    if isinstance(obj, Pool) and obj.pk:
        data["traits"] = sorted(obj.traits.values_list("slug", flat=True))
    return data


def _object_key(obj: models.Model) -> str:
    return str(getattr(obj, "national_id", None) or getattr(obj, "slug", None) or obj.pk)


def _owner_of(obj: models.Model) -> Organization | None:
    if isinstance(obj, Center):
        return obj.operator
    if isinstance(obj, Pool):
        return obj.center.operator
    if isinstance(obj, Organization):
        return obj
    if isinstance(obj, Membership | WebhookSubscription):
        return obj.organization
    # Apps above the registry (verification, brokers) name the tenant of their own objects.
    owner = getattr(obj, "change_log_owner", None)
    return owner if isinstance(owner, Organization) else None


def change_record(
    *,
    obj: models.Model,
    action: ChangeAction,
    actor: Actor | None,
    door: Door,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    object_id: int | None = None,
) -> ChangeRecord:
    """Write one change-log row. Call inside the transaction that made the change."""
    actor_user = signed_in(actor)
    return ChangeRecord.objects.create(
        actor=actor_user,
        owner=_owner_of(obj),
        door=door,
        request_id=current_request_id(),
        object_type=obj._meta.label_lower,
        object_id=object_id if object_id is not None else obj.pk,
        object_key=_object_key(obj),
        object_repr=str(obj)[:200],
        action=action,
        before=before,
        after=after,
    )


# --- Lifecycle --------------------------------------------------------------------------------


def lifecycle_transition(
    *,
    obj: _Listed,
    to: str,
    reason: str,
    actor: Actor | None,
    door: Door,
    as_operator: bool = False,
) -> _Listed:
    """Move a center or pool to ``to``: the only writer of ``status``.

    The move must be in ``ALLOWED_TRANSITIONS``; ``as_operator`` further limits it to the moves an
    operator may ask for. The update is a compare-and-set on the old status, so two concurrent
    movers cannot both succeed from the same state; the loser gets ``IllegalTransition``.
    """
    old = obj.status
    if to not in Status.values:
        raise IllegalTransition(f"Unknown status {to!r}.")
    if to not in ALLOWED_TRANSITIONS[old]:
        raise IllegalTransition(f"A {old} object cannot become {to}.")
    if as_operator and (old, to) not in OPERATOR_TRANSITIONS:
        raise IllegalTransition(f"Only the platform moves an object from {old} to {to}.")
    if _abandons_a_run(obj, to, actor, door):
        # Retired or withdrawn once the challenge was out (its checked steps seen): counted as
        # a failure by the resubmission cool-down, whatever the run's own verdict.
        reason = f"{ABANDONED_REASON}: {reason}"
    now = timezone.now()
    with transaction.atomic():
        updated = (
            type(obj)
            .objects.filter(pk=obj.pk, status=old)
            .update(
                status=to,
                status_reason=reason[:500],
                status_changed_at=now,
                version=models.F("version") + 1,
                updated_at=now,
            )
        )
        if updated != 1:
            obj.refresh_from_db()
            raise IllegalTransition(
                f"The object changed meanwhile (now {obj.status}); {old} -> {to} not applied."
            )
        obj.refresh_from_db()
        LifecycleTransition.objects.create(
            object_type=obj._meta.label_lower,
            object_id=obj.pk,
            object_key=_object_key(obj),
            from_status=old,
            to_status=to,
            reason=reason[:500],
            actor=signed_in(actor),
            door=door,
        )
        change_record(
            obj=obj,
            action=ChangeAction.TRANSITION,
            actor=actor,
            door=door,
            before={"status": old},
            after={"status": to, "reason": reason[:500]},
        )
        request_id = current_request_id()
        obj_type, obj_id = obj._meta.label_lower, obj.pk
        transaction.on_commit(
            lambda: status_changed.send(
                sender=type(obj),
                object_type=obj_type,
                object_id=obj_id,
                from_status=old,
                to_status=to,
                reason=reason,
            )
        )
        if isinstance(obj, Pool) and to == Status.SUBMITTED:
            transaction.on_commit(
                lambda: pool_submitted.send(sender=Pool, pool_id=obj_id, request_id=request_id)
            )
    return obj


def _abandons_a_run(obj: Center | Pool, to: str, actor: Actor | None, door: Door) -> bool:
    """Whether this move takes a pool out of verification, at a center's request (not the
    worker's, not platform staff's), while one of its runs is running: the challenge is out, so
    the center may have seen which steps are checked (a queued run has shown it nothing)."""
    if not isinstance(obj, Pool) or to not in (Status.RETIRED, Status.DRAFT):
        return False
    if door == Door.WORKER or selectors.is_platform_staff(actor):
        return False
    runs = apps.get_model("verification", "VerificationRun")._default_manager
    return bool(runs.filter(pool_id=obj.pk, state="running").exists())


# --- Centers ----------------------------------------------------------------------------------


def _changes(obj: Center | Pool, data: dict[str, Any]) -> bool:
    """Whether ``data`` changes any field of ``obj`` (compared as values: ``10.00`` is
    ``10.0000``; a related object by identity)."""
    return any(getattr(obj, field) != value for field, value in data.items())


def _check_version(obj: Center | Pool, expected_version: int | None) -> None:
    if expected_version is not None and expected_version != obj.version:
        raise StaleVersion(obj.version)


def _require_operator(actor: Actor) -> Organization:
    if not selectors.can_operate(actor):
        raise PermissionDenied("Only center operators register compute capacity.")
    org = selectors.organization_of(actor)
    assert org is not None
    return org


def _check_agent_endpoint(endpoint: str) -> None:
    """The agent endpoint must be ``host:port`` and, outside development, public (SSRF)."""
    if not endpoint:
        return
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise ValidationError({"agent_endpoint": ["Expected host:port."]})
    resolve_public(
        host,
        int(port),
        field="agent_endpoint",
        allow_private=settings.AGENT_ENDPOINT_ALLOW_LOOPBACK,
    )


@transaction.atomic
def center_register(*, actor: Actor, door: Door, data: dict[str, Any]) -> Center:
    """Register a new center (``draft``) for the actor's organization and give it its national
    identifier ``CN-<hub>-<cluster>-<nnnn>``."""
    operator = _require_operator(actor)
    unknown = set(data) - set(CENTER_FIELDS)
    if unknown:
        raise ValidationError({f: ["Unknown field."] for f in sorted(unknown)})
    cluster = data.get("cluster")
    if not isinstance(cluster, Cluster):
        raise ValidationError({"cluster": ["A cluster is required."]})
    # Lock the cluster row: the sequence number is read and bumped by one writer at a time.
    cluster = Cluster.objects.select_for_update().select_related("hub").get(pk=cluster.pk)
    _check_agent_endpoint(data.get("agent_endpoint", ""))
    center = Center(operator=operator, **data)
    center.cluster = cluster
    center.national_id = (
        f"CN-{cluster.hub.code.upper()}-{cluster.code.upper()}-{cluster.next_center_seq:04d}"
    )
    center.full_clean()
    center.save()
    Cluster.objects.filter(pk=cluster.pk).update(next_center_seq=models.F("next_center_seq") + 1)
    change_record(
        obj=center,
        action=ChangeAction.CREATE,
        actor=actor,
        door=door,
        before=None,
        after=snapshot(center),
    )
    return center


@transaction.atomic
def center_update(
    *,
    center: Center,
    actor: Actor,
    door: Door,
    data: dict[str, Any],
    expected_version: int | None = None,
) -> Center:
    """Change a center's declared facts. The cluster is fixed once the center leaves draft,
    because its identifier and its pools' placement depend on it."""
    center = Center.objects.select_for_update().get(pk=center.pk)
    _check_version(center, expected_version)
    unknown = set(data) - set(CENTER_FIELDS)
    if unknown:
        raise ValidationError({f: ["This field cannot be changed."] for f in sorted(unknown)})
    if (
        "cluster" in data
        and data["cluster"].pk != center.cluster_id
        and center.status != Status.DRAFT
    ):
        raise ValidationError(
            {"cluster": ["The cluster can only change while the center is a draft."]}
        )
    if "agent_endpoint" in data:
        _check_agent_endpoint(data["agent_endpoint"])
    if not _changes(center, data):
        # Nothing to change (e.g. only read-only fields were sent): no new version, no record.
        return center
    before = snapshot(center)
    for field, value in data.items():
        setattr(center, field, value)
    center.version += 1
    center.full_clean()
    center.save()
    change_record(
        obj=center,
        action=ChangeAction.UPDATE,
        actor=actor,
        door=door,
        before=before,
        after=snapshot(center),
    )
    return center


def _require_admin_to_delete(actor: Actor, operator: Organization) -> None:
    """Deleting is for the owning organization's admins (or platform staff), at every door."""
    if not selectors.is_platform_staff(actor) and not (
        selectors.is_org_admin(actor) and selectors.organization_of(actor) == operator
    ):
        raise PermissionDenied("Only an organization admin may delete.")


@transaction.atomic
def center_delete(*, center: Center, actor: Actor, door: Door) -> None:
    """Delete a draft center (with its draft pools). Anything past draft is retired instead."""
    center = (
        Center.objects.select_for_update(of=("self",)).select_related("operator").get(pk=center.pk)
    )
    _require_admin_to_delete(actor, center.operator)
    if center.status != Status.DRAFT or center.pools.exclude(status=Status.DRAFT).exists():
        raise ValidationError({"status": ["Only draft centers can be deleted; retire it instead."]})
    for pool in list(center.pools.all()):
        pool_delete(pool=pool, actor=actor, door=door)
    before, pk = snapshot(center), center.pk
    center.delete()
    change_record(
        obj=center,
        action=ChangeAction.DELETE,
        actor=actor,
        door=door,
        before=before,
        after=None,
        object_id=pk,
    )


@transaction.atomic
def center_submit(*, center: Center, actor: Actor, door: Door) -> Center:
    """Submit a draft center and its draft pools for verification."""
    center = Center.objects.select_for_update().get(pk=center.pk)
    drafts = list(center.pools.filter(status=Status.DRAFT))
    if center.status in (Status.DRAFT, Status.FAILED):
        lifecycle_transition(
            obj=center,
            to=Status.SUBMITTED,
            reason="submitted by operator",
            actor=actor,
            door=door,
            as_operator=True,
        )
    elif not drafts:
        raise IllegalTransition(f"The center is {center.status} and has no draft pools to submit.")
    for pool in drafts:
        pool_submit(pool=pool, actor=actor, door=door)
    center.refresh_from_db()
    return center


# --- Pools ------------------------------------------------------------------------------------


def _set_traits(pool: Pool, slugs: list[str] | None) -> None:
    if slugs is None:
        return
    traits = []
    for slug in slugs:
        trait, _ = Trait.objects.get_or_create(slug=slug)
        traits.append(trait)
    pool.traits.set(traits)


@transaction.atomic
def pool_create(
    *,
    actor: Actor,
    door: Door,
    center: Center,
    data: dict[str, Any],
    traits: list[str] | None = None,
) -> Pool:
    """Declare a pool (``draft``) in one of the actor's centers; its identifier is the center's
    plus ``-P<nn>``."""
    _require_operator(actor)
    # Lock the center: pool sequence numbers are handed out one at a time.
    try:
        center = (
            selectors.centers_editable_by(actor).select_for_update(of=("self",)).get(pk=center.pk)
        )
    except Center.DoesNotExist:
        raise ValidationError({"center": ["Unknown center."]}) from None
    if center.status == Status.RETIRED:
        raise ValidationError({"center": ["The center is retired."]})
    unknown = set(data) - set(POOL_FIELDS)
    if unknown:
        raise ValidationError({f: ["Unknown field."] for f in sorted(unknown)})
    pool = Pool(center=center, **data)
    pool.national_id = f"{center.national_id}-P{center.next_pool_seq:02d}"
    pool.full_clean()
    pool.save()
    Center.objects.filter(pk=center.pk).update(next_pool_seq=models.F("next_pool_seq") + 1)
    _set_traits(pool, traits)
    change_record(
        obj=pool,
        action=ChangeAction.CREATE,
        actor=actor,
        door=door,
        before=None,
        after=snapshot(pool),
    )
    return pool


@transaction.atomic
def pool_update(
    *,
    pool: Pool,
    actor: Actor,
    door: Door,
    data: dict[str, Any],
    traits: list[str] | None = None,
    expected_version: int | None = None,
) -> Pool:
    """Change a pool. Hardware may change only before verification has accepted it (draft,
    submitted, failed); price, currency, name and traits may change at any time."""
    pool = (
        Pool.objects.select_for_update(of=("self",))
        .select_related("center__operator")
        .get(pk=pool.pk)
    )
    _check_version(pool, expected_version)
    unknown = set(data) - set(POOL_FIELDS)
    if unknown:
        raise ValidationError({f: ["This field cannot be changed."] for f in sorted(unknown)})
    if pool.status not in EDITABLE_STATUSES:
        locked = sorted(
            f for f in data if f in POOL_HARDWARE_FIELDS and getattr(pool, f) != data[f]
        )
        if locked:
            raise ValidationError(
                {
                    f: [
                        f"Declared hardware cannot change while the pool is {pool.status}; "
                        "retire it and declare a new pool."
                    ]
                    for f in locked
                }
            )
    same_traits = traits is None or set(traits) == set(pool.traits.values_list("slug", flat=True))
    if not _changes(pool, data) and same_traits:
        # Nothing to change (e.g. only read-only fields were sent): no new version, no record.
        return pool
    before = snapshot(pool)
    for field, value in data.items():
        setattr(pool, field, value)
    pool.version += 1
    pool.full_clean()
    pool.save()
    _set_traits(pool, traits)
    change_record(
        obj=pool,
        action=ChangeAction.UPDATE,
        actor=actor,
        door=door,
        before=before,
        after=snapshot(pool),
    )
    return pool


@transaction.atomic
def pool_delete(*, pool: Pool, actor: Actor, door: Door) -> None:
    """Delete a draft pool. A pool past draft keeps its history and is retired instead."""
    pool = (
        Pool.objects.select_for_update(of=("self",))
        .select_related("center__operator")
        .get(pk=pool.pk)
    )
    _require_admin_to_delete(actor, pool.center.operator)
    if pool.status != Status.DRAFT:
        raise ValidationError({"status": ["Only draft pools can be deleted; retire it instead."]})
    if LifecycleTransition.objects.filter(
        object_type=Pool._meta.label_lower, object_id=pool.pk
    ).exists():
        # Deleting would take its verification runs (the evidence, failed ones included) and
        # its failures, which the resubmission cool-down counts, with it.
        raise ValidationError(
            {
                "status": [
                    "A pool that left draft keeps its history (verification runs, failures); "
                    "retire it instead."
                ]
            }
        )
    before, pk = snapshot(pool), pool.pk
    pool.delete()
    change_record(
        obj=pool,
        action=ChangeAction.DELETE,
        actor=actor,
        door=door,
        before=before,
        after=None,
        object_id=pk,
    )


@transaction.atomic
def pool_submit(*, pool: Pool, actor: Actor, door: Door) -> Pool:
    """Submit a pool for verification; verification is queued when the transaction commits.

    A pool cannot be verified before its center is known to the platform, so a draft center is
    submitted along with it.
    """
    pool = Pool.objects.select_related("center").get(pk=pool.pk)
    # Before anything is written: a pool that failed verification waits out its cool-down
    # (whichever way it comes back: failed -> submitted, or through draft), so a cheat caught
    # with probability p cannot be retried at once until it slips through. Platform staff may
    # lift it.
    cooldown = selectors.resubmit_cooldown(pool, timezone.now())
    if cooldown is not None and not selectors.is_platform_staff(actor):
        raise ResubmitTooSoon(cooldown.message(), cooldown.allowed_at)
    if pool.center.status in (Status.DRAFT, Status.FAILED):
        lifecycle_transition(
            obj=pool.center,
            to=Status.SUBMITTED,
            reason="submitted with a pool",
            actor=actor,
            door=door,
            as_operator=True,
        )
    if pool.center.status in (Status.RETIRED, Status.SUSPENDED):
        raise IllegalTransition(f"The center is {pool.center.status}.")
    lifecycle_transition(
        obj=pool,
        to=Status.SUBMITTED,
        reason="submitted by operator",
        actor=actor,
        door=door,
        as_operator=True,
    )
    return pool


def pool_request_transition(*, pool: Pool, to: str, reason: str, actor: Actor, door: Door) -> Pool:
    """An operator's or platform staff's explicit lifecycle request (retire, withdraw, suspend)."""
    if to == Status.SUBMITTED:
        return pool_submit(pool=pool, actor=actor, door=door)
    staff = selectors.is_platform_staff(actor)
    return lifecycle_transition(
        obj=pool,
        to=to,
        reason=reason or f"requested by {actor}",
        actor=actor,
        door=door,
        as_operator=not staff,
    )


@transaction.atomic
def pool_record_measurement(
    *,
    pool: Pool,
    measured_tflops_per_accelerator: float,
    verified_at: dt.datetime,
    actor: Actor | None,
    door: Door,
) -> Pool:
    """Record what verification measured on a pool: throughput per accelerator, and when.

    Written by the platform's verifier only (it is not an operator-editable field); the status
    move that goes with a verdict is a separate ``lifecycle_transition``.
    """
    before = {
        "measured_tflops_per_accelerator": pool.measured_tflops_per_accelerator,
        "verified_at": _jsonable(pool.verified_at),
    }
    Pool.objects.filter(pk=pool.pk).update(
        measured_tflops_per_accelerator=measured_tflops_per_accelerator,
        verified_at=verified_at,
        updated_at=timezone.now(),
    )
    pool.measured_tflops_per_accelerator = measured_tflops_per_accelerator
    pool.verified_at = verified_at
    change_record(
        obj=pool,
        action=ChangeAction.UPDATE,
        actor=actor,
        door=door,
        before=before,
        after={
            "measured_tflops_per_accelerator": measured_tflops_per_accelerator,
            "verified_at": _jsonable(verified_at),
        },
    )
    return pool


def center_request_transition(
    *, center: Center, to: str, reason: str, actor: Actor, door: Door
) -> Center:
    if to == Status.SUBMITTED:
        return center_submit(center=center, actor=actor, door=door)
    staff = selectors.is_platform_staff(actor)
    with transaction.atomic():
        center = lifecycle_transition(
            obj=center,
            to=to,
            reason=reason or f"requested by {actor}",
            actor=actor,
            door=door,
            as_operator=not staff,
        )
        if to in (Status.RETIRED, Status.SUSPENDED):
            # A retired or suspended center takes its pools with it.
            for pool in center.pools.exclude(status__in=[Status.RETIRED, to]):
                if to in ALLOWED_TRANSITIONS[pool.status]:
                    lifecycle_transition(
                        obj=pool, to=to, reason=f"center {to}", actor=actor, door=door
                    )
    return center


# --- Tokens -----------------------------------------------------------------------------------


@transaction.atomic
def token_create(*, user: Actor, name: str) -> tuple[ApiToken, str]:
    """Create an API token; the returned plain token is shown once and never stored."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": ["A token needs a name."]})
    if len(name) > 100:
        raise ValidationError({"name": ["At most 100 characters."]})
    owner = signed_in(user)
    if owner is None:
        raise PermissionDenied("Sign in to create a token.")
    token, key_id, digest = ApiToken.generate()
    row = ApiToken.objects.create(user=owner, name=name, key_id=key_id, digest=digest)
    return row, token


@transaction.atomic
def token_revoke(*, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
    return token


def user_for_token(raw: str) -> Actor | None:
    """The active user behind a bearer token, or None (unknown, revoked, malformed).

    Used by the REST API, the gRPC broker and the telemetry service alike.
    """
    import hmac

    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != "ci":
        return None
    row = (
        ApiToken.objects.select_related("user__membership__organization")
        .filter(key_id=parts[1])
        .first()
    )
    if row is None or row.revoked_at is not None or not row.user.is_active:
        return None
    if not hmac.compare_digest(row.digest, hash_token_secret(raw)):
        return None
    now = timezone.now()
    # Record use at most once a minute: a write on every request would serialize readers.
    if row.last_used_at is None or now - row.last_used_at > dt.timedelta(minutes=1):
        ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user


# --- Members ----------------------------------------------------------------------------------


@transaction.atomic
def member_invite(
    *, actor: Actor, door: Door, username: str, email: str, role: str
) -> tuple[Any, str]:
    """An organization admin adds a member to their organization.

    The new user gets a random one-time password, returned once (shown to the admin to pass on)
    and never stored in clear; the member changes it after signing in.
    """
    import secrets

    from django.contrib.auth import get_user_model

    if not selectors.is_org_admin(actor):
        raise PermissionDenied("Only organization admins invite members.")
    org = selectors.organization_of(actor)
    if org is None:
        raise PermissionDenied("Only members of an organization invite members.")
    if role not in Role.values:
        raise ValidationError({"role": ["Unknown role."]})
    username = (username or "").strip()
    user_model = get_user_model()
    user = user_model(username=username, email=(email or "").strip())
    password = secrets.token_urlsafe(12)
    user.set_password(password)
    # full_clean checks the username's characters and its uniqueness with Django's messages.
    user.full_clean(exclude=["password"])
    user.save()
    membership = Membership.objects.create(user=user, organization=org, role=role)
    change_record(
        obj=membership,
        action=ChangeAction.CREATE,
        actor=actor,
        door=door,
        before=None,
        after={"username": user.username, "role": role, "organization": org.slug},
    )
    return user, password
