"""Portal pages of verification: the evidence behind a pool's status, its heartbeats and
availability, and the operator's requests (re-verify, scheduled downtime).

The pool page is the registry's (``registry.views.pool_detail_context``) with verification's
sections added for the pool's operator and platform staff; everyone else sees the registry's
public facts only. Tenancy comes from ``verification.selectors`` (through the registry's).
"""

import datetime as dt
import uuid
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Avg, Count, Sum
from django.db.models.functions import TruncMinute
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from registry import charts
from registry import selectors as registry_selectors
from registry import views as registry_views
from registry.choices import Door
from registry.forms import apply_service_errors
from verification import selectors, services
from verification.choices import Trigger
from verification.forms import DowntimeForm

AVAILABILITY_DAYS = 14
HEARTBEAT_WINDOW = dt.timedelta(hours=2)


def _verification_context(request: HttpRequest, pool: Any) -> dict[str, Any]:
    now = timezone.now()
    days = selectors.availability_by_day(pool=pool, days=AVAILABILITY_DAYS, now=now)
    # Heartbeats per minute over the last two hours: at most 120 points whatever the agent's
    # interval (the index on (pool, -time) serves the range).
    beats = list(
        selectors.heartbeats_visible_to(request.user)
        .filter(pool=pool, time__gte=now - HEARTBEAT_WINDOW)
        .annotate(minute=TruncMinute("time"))
        .values("minute")
        .annotate(
            utilization=Avg("utilization"),
            busy=Sum("accelerators_busy"),
            healthy=Sum("accelerators_healthy"),
            n=Count("id"),
        )
        .order_by("minute")
    )
    latest = selectors.heartbeats_visible_to(request.user).filter(pool=pool).first()
    return {
        "runs": selectors.runs_visible_to(request.user).filter(pool=pool)[:10],
        "availability_days": days,
        "availability_chart": charts.column_chart(
            [(d.date.strftime("%b %d"), d.availability) for d in days]
        ),
        "utilization_days_chart": charts.column_chart(
            [(d.date.strftime("%b %d"), d.mean_utilization) for d in days]
        ),
        "heartbeat_chart": charts.line_chart(
            [(b["minute"], b["utilization"] * 100) for b in beats], y_max=100, unit=" %"
        ),
        "latest_heartbeat": latest,
        "downtimes": selectors.downtimes_visible_to(request.user).filter(pool=pool)[:10],
    }


def pool_detail(request: HttpRequest, national_id: str, **extra: Any) -> HttpResponse:
    """The pool page, with verification runs, heartbeats, availability and downtime for its
    operator."""
    context = registry_views.pool_detail_context(request, national_id)
    if context["editable"]:
        context.update(_verification_context(request, context["pool"]))
        context.setdefault("downtime_form", DowntimeForm())
        context["can_reverify"] = context["pool"].status in services.VERIFIABLE_STATUSES
    context.update(extra)
    return render(request, "verification/pool_detail.html", context)


@login_required
@require_POST
def pool_reverify(request: HttpRequest, national_id: str) -> HttpResponse:
    pool = get_object_or_404(
        registry_selectors.pools_editable_by(request.user), national_id=national_id
    )
    try:
        run, created = services.verification_request(
            pool=pool, trigger=Trigger.OPERATOR_REQUEST, actor=request.user, door=Door.PORTAL
        )
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
    else:
        messages.success(
            request,
            "Verification queued." if created else "A verification run is already in progress.",
        )
    return redirect("pool-detail", national_id=pool.national_id)


@login_required
@require_POST
def downtime_declare(request: HttpRequest, national_id: str) -> HttpResponse:
    pool = get_object_or_404(
        registry_selectors.pools_editable_by(request.user), national_id=national_id
    )
    form = DowntimeForm(request.POST)
    if form.is_valid():
        try:
            services.downtime_declare(
                actor=request.user, door=Door.PORTAL, pool=pool, **form.cleaned_data
            )
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, "Scheduled downtime declared.")
            return redirect("pool-detail", national_id=pool.national_id)
    # Show the pool page again with the form's input and messages.
    return pool_detail(request, national_id, downtime_form=form)


@login_required
def run_detail(request: HttpRequest, run_id: str) -> HttpResponse:
    """One verification run with all its evidence (the pool's operator and platform staff)."""
    run = get_object_or_404(selectors.runs_visible_to(request.user), run_id=_uuid_or_404(run_id))
    return render(request, "verification/run_detail.html", {"run": run, "pool": run.pool})


def _uuid_or_404(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise Http404("No such run.") from None


def center_detail(request: HttpRequest, national_id: str, **extra: Any) -> HttpResponse:
    """The center page, with the center's scheduled downtime for its operator."""
    context = registry_views.center_detail_context(request, national_id)
    if context["editable"]:
        context["downtimes"] = selectors.downtimes_visible_to(request.user).filter(
            center=context["center"]
        )[:10]
        context.setdefault("downtime_form", DowntimeForm())
    context.update(extra)
    return render(request, "verification/center_detail.html", context)


@login_required
@require_POST
def center_downtime_declare(request: HttpRequest, national_id: str) -> HttpResponse:
    """Announce maintenance of a whole center (every pool in it)."""
    center = get_object_or_404(
        registry_selectors.centers_editable_by(request.user), national_id=national_id
    )
    form = DowntimeForm(request.POST)
    if form.is_valid():
        try:
            services.downtime_declare(
                actor=request.user, door=Door.PORTAL, center=center, **form.cleaned_data
            )
        except ValidationError as exc:
            apply_service_errors(form, exc)
        else:
            messages.success(request, "Scheduled downtime of the center declared.")
            return redirect("center-detail", national_id=center.national_id)
    return center_detail(request, national_id, downtime_form=form)
