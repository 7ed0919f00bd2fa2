"""Portal pages of the registry: thin doors that parse a form, call one service and render.

Tenancy comes from ``registry.selectors`` only: an object outside the user's selector is a 404
(its existence does not leak); a page a role may not use at all (an AI firm registering capacity)
is a 403. Every write is a POST with a CSRF token and goes through ``registry.services`` with
``door=portal``.
"""

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from registry import charts, selectors, services
from registry.choices import (
    LISTED_STATUSES,
    OPERATOR_TRANSITIONS,
    STATUS_COLORS,
    Door,
    Status,
)
from registry.filtersets import PoolFilterSet
from registry.forms import (
    CapacitySearchForm,
    CenterForm,
    MemberInviteForm,
    PoolForm,
    TokenCreateForm,
    TransitionForm,
    apply_service_errors,
)
from registry.models import Accelerator, Cluster, Hub, HubLink, LifecycleTransition

PAGE_SIZE = 25
# Lists count at most this many rows: an exact COUNT(*) over a million bookings costs more than
# the rest of the page, and nobody pages that far (the page says "more than" and asks to filter).
COUNT_CAP = 10_000


class CappedPaginator(Paginator[Any]):
    """A paginator whose count stops at ``COUNT_CAP`` (``SELECT COUNT(*) FROM (... LIMIT n)``)."""

    @property
    def count(self) -> int:
        if not hasattr(self, "_capped_count"):
            # Order does not change a count; without it the database need not sort.
            rows = cast(QuerySet[Any], self.object_list)
            self._capped_count = rows.order_by()[: COUNT_CAP + 1].count()
        return min(self._capped_count, COUNT_CAP)

    @property
    def capped(self) -> bool:
        return self.count == COUNT_CAP and self._capped_count > COUNT_CAP


def paginate(request: HttpRequest, qs: QuerySet[Any], per_page: int = PAGE_SIZE) -> Page[Any]:
    """One page of a long list (``?page=``); an out-of-range page shows the last one."""
    return CappedPaginator(qs, per_page).get_page(request.GET.get("page"))


@dataclass
class UncountedPage:
    """A page of a list too long, or too costly, to count (a firm's bookings, the change log):
    it fetches one row more than it shows to know whether a next page exists."""

    object_list: list[Any]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    def next_page_number(self) -> int:
        return self.number + 1

    def previous_page_number(self) -> int:
        return self.number - 1

    def __iter__(self) -> Iterator[Any]:
        return iter(self.object_list)

    def __len__(self) -> int:
        return len(self.object_list)


def paginate_uncounted(
    request: HttpRequest, qs: QuerySet[Any], per_page: int = PAGE_SIZE
) -> UncountedPage:
    try:
        number = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        number = 1
    offset = (number - 1) * per_page
    rows = list(qs[offset : offset + per_page + 1])
    return UncountedPage(rows[:per_page], number, len(rows) > per_page)


def _require_operator(request: HttpRequest) -> None:
    if not selectors.can_operate(request.user):
        raise PermissionDenied("Only center operators register capacity.")


# --- National dashboard -----------------------------------------------------------------------

CAPACITY_CACHE_SECONDS = 15


def dashboard_context(request: HttpRequest) -> dict[str, Any]:
    """The registry's part of the national dashboard: capacity by hub and cluster on a
    schematic map, by model and origin, and the verified share (apps above add theirs)."""
    # One grouped query over every pool (~50 ms at 100,000 pools), shared by every visitor for
    # a few seconds: the figures are at most CAPACITY_CACHE_SECONDS old.
    summary = cast(
        dict[str, Any],
        cache.get_or_set(
            "portal:national-capacity", selectors.national_capacity, CAPACITY_CACHE_SECONDS
        ),
    )
    by_cluster = [dict(row) for row in summary["by_cluster"]]
    hubs = list(Hub.objects.all())
    clusters = list(Cluster.objects.all())
    links = list(HubLink.objects.select_related("a", "b"))
    national_map = charts.national_map(
        hubs=hubs,
        clusters=clusters,
        links=links,
        hub_capacity={r["hub"]: r["a100_equivalents"] for r in summary["by_hub"]},
        cluster_capacity={r["cluster"]: r["a100_equivalents"] for r in by_cluster},
    )
    cluster_names = {c.code: c.name for c in clusters}
    for row in by_cluster:
        row["cluster_name"] = cluster_names.get(row["cluster"], row["cluster"])
    return {
        "summary": summary,
        "by_cluster": by_cluster,
        "map": national_map,
        "by_model_chart": charts.bar_chart(
            summary["by_accelerator"],
            label="accelerator",
            value="accelerators",
            part="verified_accelerators",
            unit="accelerators",
            labels={a.slug: f"{a.vendor} {a.model}" for a in Accelerator.objects.all()},
        ),
        "by_origin_chart": charts.bar_chart(
            summary["by_origin"],
            label="origin",
            value="a100_equivalents",
            unit="A100-eq.",
            labels={"domestic": "Domestic", "imported": "Imported"},
        ),
        "by_hub_chart": charts.bar_chart(
            summary["by_hub"],
            label="hub_name",
            value="accelerators",
            part="verified_accelerators",
            unit="accelerators",
        ),
    }


def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "registry/dashboard.html", dashboard_context(request))


# --- Capacity search (AI firms and everyone) --------------------------------------------------


def capacity_search_context(request: HttpRequest) -> dict[str, Any]:
    """Search listed capacity with ``PoolFilterSet``'s filters over ``pools_visible_to``."""
    form = CapacitySearchForm(request.GET or {"status": "active"})
    qs = selectors.pools_with_a100_equivalents(selectors.pools_visible_to(request.user))
    if form.is_valid():
        data = {k: v for k, v in form.cleaned_data.items() if v not in (None, "")}
        status = data.pop("status", None)
        min_a100 = data.pop("min_a100_equivalents", None)
        # Status is filtered here rather than by the FilterSet's MultipleChoiceFilter, which adds
        # a DISTINCT that makes the page's count scan every column of every pool.
        if status == "active":
            qs = qs.filter(status=Status.ACTIVE)
        elif status == "listed":
            qs = qs.filter(status__in=sorted(LISTED_STATUSES))
        qs = PoolFilterSet(data=data, queryset=qs).qs
        if min_a100 is not None:
            qs = qs.filter(a100_eq__gte=min_a100)
    else:
        qs = qs.none()
    page = paginate(request, qs.order_by("national_id"))
    query = request.GET.copy()
    query.pop("page", None)
    return {"form": form, "page": page, "query": query.urlencode()}


def capacity_search(request: HttpRequest) -> HttpResponse:
    return render(request, "registry/capacity_search.html", capacity_search_context(request))


# --- Centers ----------------------------------------------------------------------------------


def center_list(request: HttpRequest) -> HttpResponse:
    """Centers the user may see; operators see their own first-class (``?mine=1`` by default)."""
    qs = selectors.centers_visible_to(request.user)
    org = selectors.organization_of(request.user)
    operator = selectors.can_operate(request.user)
    mine = request.GET.get("mine", "1" if operator else "0") == "1"
    if mine and org is not None:
        qs = qs.filter(operator=org)
    return render(
        request,
        "registry/center_list.html",
        {
            "page": paginate(request, qs.order_by("national_id")),
            "mine": mine,
            "can_operate": operator,
        },
    )


@login_required
def center_register(request: HttpRequest) -> HttpResponse:
    _require_operator(request)
    form = CenterForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            center = services.center_register(
                actor=request.user, door=Door.PORTAL, data=dict(form.cleaned_data)
            )
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, f"Center {center.national_id} registered.")
            return redirect("center-detail", national_id=center.national_id)
    return render(request, "registry/center_form.html", {"form": form})


def center_detail_context(request: HttpRequest, national_id: str) -> dict[str, Any]:
    """What the center page shows from the registry (verification adds its downtime)."""
    center = get_object_or_404(selectors.centers_visible_to(request.user), national_id=national_id)
    editable = selectors.centers_editable_by(request.user).filter(pk=center.pk).exists()
    pools = list(
        selectors.pools_visible_to(request.user).filter(center=center).order_by("national_id")
    )
    # The center's and its pools' records, by (object_type, object_id): the index that serves
    # "the history of one object" (change_object_idx), whatever the size of the log.
    changes = (
        selectors.changes_visible_to(request.user).filter(
            Q(object_type="registry.center", object_id=center.pk)
            | Q(object_type="registry.pool", object_id__in=[p.pk for p in pools])
        )[:20]
        if editable
        else []
    )
    return {"center": center, "pools": pools, "editable": editable, "changes": changes}


def center_detail(request: HttpRequest, national_id: str) -> HttpResponse:
    return render(
        request, "registry/center_detail.html", center_detail_context(request, national_id)
    )


# --- Pools ------------------------------------------------------------------------------------


@login_required
def pool_list(request: HttpRequest) -> HttpResponse:
    """The operator's own pools in every state (platform staff: all)."""
    _require_operator(request)
    qs = selectors.pools_editable_by(request.user)
    status = request.GET.get("status")
    if status in Status.values:
        qs = qs.filter(status=status)
    return render(
        request,
        "registry/pool_list.html",
        {
            "page": paginate(request, qs.order_by("national_id")),
            "statuses": Status.choices,
            "status": status,
        },
    )


@login_required
def pool_create(request: HttpRequest, national_id: str) -> HttpResponse:
    _require_operator(request)
    center = get_object_or_404(selectors.centers_editable_by(request.user), national_id=national_id)
    form = PoolForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            pool = services.pool_create(
                actor=request.user,
                door=Door.PORTAL,
                center=center,
                data=form.service_data(),
                traits=form.cleaned_data["traits"],
            )
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, f"Pool {pool.national_id} declared as a draft.")
            return redirect("pool-detail", national_id=pool.national_id)
    return render(request, "registry/pool_form.html", {"form": form, "center": center})


AVAILABILITY_WINDOW = dt.timedelta(days=30)
# The timeline's headline figure is the share of time the pool was active (bookable); the
# availability rule proper (what counts as known, scheduled downtime) is verification's.
UP_STATUSES = frozenset({Status.ACTIVE})


def pool_status_timeline(pool: Any, now: dt.datetime) -> dict[str, Any]:
    """The pool's status over the last 30 days from its lifecycle transitions."""
    since = max(now - AVAILABILITY_WINDOW, pool.created_at)
    transitions = list(
        LifecycleTransition.objects.filter(
            object_type="registry.pool", object_id=pool.pk, time__gte=since
        ).order_by("time", "id")
    )
    before = (
        LifecycleTransition.objects.filter(
            object_type="registry.pool", object_id=pool.pk, time__lt=since
        )
        .order_by("-time", "-id")
        .values_list("to_status", flat=True)
        .first()
    )
    initial = before or (transitions[0].from_status if transitions else pool.status)
    return {
        "transitions": transitions,
        "timeline": charts.status_timeline(
            transitions=transitions,
            initial=initial,
            since=since,
            until=now,
            colors=STATUS_COLORS,
            up=UP_STATUSES,
        ),
        "since": since,
    }


def pool_detail_context(request: HttpRequest, national_id: str) -> dict[str, Any]:
    """What the pool page shows from the registry; apps above it add their sections
    (``verification.views.pool_detail``)."""
    pool = get_object_or_404(selectors.pools_visible_to(request.user), national_id=national_id)
    editable = selectors.pools_editable_by(request.user).filter(pk=pool.pk).exists()
    context: dict[str, Any] = {
        "pool": pool,
        "editable": editable,
        "traits": [t.slug for t in pool.traits.all()],
        # The datasheet figure for the precision the declaration is about (None: not catalogued).
        "catalog_peak": pool.accelerator.peak_tflops(pool.declared_precision),
        "transition_form": TransitionForm(
            status=pool.status, staff=selectors.is_platform_staff(request.user)
        ),
        # Shown when the transition table lets an operator submit from here (the service decides).
        "can_submit": (pool.status, Status.SUBMITTED) in OPERATOR_TRANSITIONS,
        **pool_status_timeline(pool, timezone.now()),
    }
    if editable:
        # When a pool that failed verification may be submitted again (the service refuses
        # earlier with the same sentence).
        context["resubmit_cooldown"] = (
            selectors.resubmit_cooldown(pool, timezone.now()) if context["can_submit"] else None
        )
        context["changes"] = selectors.changes_visible_to(request.user).filter(
            object_type="registry.pool", object_id=pool.pk
        )[:20]
    return context


def pool_detail(request: HttpRequest, national_id: str) -> HttpResponse:
    return render(request, "registry/pool_detail.html", pool_detail_context(request, national_id))


def pool_status(request: HttpRequest, national_id: str) -> JsonResponse:
    """The pool's status, for the page's poll while verification runs."""
    pool = get_object_or_404(selectors.pools_visible_to(request.user), national_id=national_id)
    return JsonResponse(
        {"status": pool.status, "label": pool.get_status_display(), "reason": pool.status_reason}
    )


@login_required
@require_POST
def pool_submit(request: HttpRequest, national_id: str) -> HttpResponse:
    pool = get_object_or_404(selectors.pools_editable_by(request.user), national_id=national_id)
    try:
        services.pool_submit(pool=pool, actor=request.user, door=Door.PORTAL)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(request, f"Pool {pool.national_id} submitted for verification.")
    return redirect("pool-detail", national_id=pool.national_id)


@login_required
@require_POST
def pool_transition(request: HttpRequest, national_id: str) -> HttpResponse:
    pool = get_object_or_404(selectors.pools_editable_by(request.user), national_id=national_id)
    form = TransitionForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose withdraw or retire.")
    else:
        try:
            services.pool_request_transition(
                pool=pool,
                to=form.cleaned_data["to"],
                reason=form.cleaned_data["reason"],
                actor=request.user,
                door=Door.PORTAL,
            )
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"Pool {pool.national_id} is now {form.cleaned_data['to']}.")
    return redirect("pool-detail", national_id=pool.national_id)


# --- Change log -------------------------------------------------------------------------------


@login_required
def change_list(request: HttpRequest) -> HttpResponse:
    qs = selectors.changes_visible_to(request.user)
    key = request.GET.get("object_key", "").strip()
    if key:
        qs = qs.filter(object_key__startswith=key)
    return render(
        request, "registry/change_list.html", {"page": paginate_uncounted(request, qs), "key": key}
    )


# --- Organization: members and tokens ---------------------------------------------------------


@login_required
def organization(request: HttpRequest) -> HttpResponse:
    """The user's organization and its members; admins invite new members here."""
    org = selectors.organization_of(request.user)
    is_admin = selectors.is_org_admin(request.user)
    form = MemberInviteForm(request.POST or None)
    invited: dict[str, str] | None = None
    if request.method == "POST":
        if not is_admin or org is None:
            raise PermissionDenied("Only organization admins invite members.")
        if form.is_valid():
            try:
                user, password = services.member_invite(
                    actor=request.user, door=Door.PORTAL, **form.cleaned_data
                )
            except ValidationError as exc:
                apply_service_errors(form, exc)
            else:
                # Shown once, in this response only: the password is stored hashed.
                invited = {"username": user.username, "password": password}
                form = MemberInviteForm()
    return render(
        request,
        "registry/organization.html",
        {
            "org": org,
            "members": selectors.members_of(request.user),
            "is_admin": is_admin,
            "form": form,
            "invited": invited,
        },
    )


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """The user's API tokens; a new token is shown once, right after it is created."""
    form = TokenCreateForm(request.POST or None)
    created: str | None = None
    if request.method == "POST" and form.is_valid():
        try:
            _, created = services.token_create(user=request.user, name=form.cleaned_data["name"])
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            form = TokenCreateForm()
    return render(
        request,
        "registry/token_list.html",
        {"tokens": selectors.tokens_of(request.user), "form": form, "created": created},
    )


@login_required
@require_POST
def token_revoke(request: HttpRequest, key_id: str) -> HttpResponse:
    token = get_object_or_404(selectors.tokens_of(request.user), key_id=key_id)
    services.token_revoke(token=token)
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("token-list")
