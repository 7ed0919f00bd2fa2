"""Portal pages of verification: the evidence behind a pool's status, its heartbeats and
availability, and the operator's requests (re-verify, scheduled downtime).

The pool page is the registry's (``registry.views.pool_detail_context``) with verification's
sections added for the pool's operator and platform staff; everyone else sees the registry's
public facts only. Tenancy comes from ``verification.selectors`` (through the registry's).
"""

import datetime as dt
import uuid
from typing import Any

from django.conf import settings
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
from verification.choices import RunState, Trigger
from verification.forms import DowntimeForm

AVAILABILITY_DAYS = 14
HEARTBEAT_WINDOW = dt.timedelta(hours=2)
# Verification runs drawn in a pool's throughput trend (at the default daily re-verification: a
# month).
TREND_RUNS = 30


def _trend_context(pool: Any) -> dict[str, Any]:
    """The pool's measured throughput per accelerator over its finished runs, for whoever may see
    the pool (the caller fetched it through ``pools_visible_to``).

    Only the public part of each run is read: when, passed or failed, the figure, the drift
    ratio. The evidence behind it (seeds, devices, checks) stays the operator's
    (``selectors.runs_visible_to``). Each run's drift floor is the verifier's rule: (1 -
    threshold) x the best of the pool's previous
    ``VERIFICATION_DRIFT_HISTORY`` passed runs (``selectors.drift_record``/``drift_floor``, the
    rule the verifier applies), so the chart shows what each run was held to.
    """
    threshold = settings.VERIFICATION_DRIFT_THRESHOLD
    history = settings.VERIFICATION_DRIFT_HISTORY
    passes: list[float] = []  # measured figures of passed runs so far, oldest first
    points: list[dict[str, Any]] = []
    for run in selectors.run_trend_of(pool, runs=TREND_RUNS):
        record = selectors.drift_record(passes)
        measured = run.measured_tflops_per_accelerator
        if run.state == RunState.FAILED:
            kind = "failed"
        elif run.verdict_reason.startswith(services.DRIFT_REASON):
            kind = "drift"
        else:
            kind = "passed"
        points.append(
            {
                "run": run,
                "time": run.finished_at,
                "value": measured,
                "kind": kind,
                "floor": None if record is None else selectors.drift_floor(record),
                "of_declared": (
                    measured / run.declared_tflops_per_accelerator
                    if measured is not None and run.declared_tflops_per_accelerator
                    else None
                ),
            }
        )
        if run.state == RunState.PASSED and measured is not None:
            passes.append(measured)
    points = points[-TREND_RUNS:]
    record = selectors.drift_record(passes)
    declared = pool.declared_tflops_per_accelerator
    latest = next((p["value"] for p in reversed(points) if p["value"] is not None), None)
    # What a screen reader announces for the chart; the table below has every figure.
    title = (
        f"Measured TFLOPS per accelerator over the last {len(points)} verification runs: "
        f"latest {'none' if latest is None else f'{latest:,.1f}'}, "
        f"declared {'none' if declared is None else f'{declared:,.1f}'}"
    )
    return {
        "trend_title": title,
        "floor_title": f"drift floor: {1 - threshold:.0%} of the best of the previous "
        f"{history} passed runs",
        "trend": charts.trend_chart(points, declared=declared),
        "trend_points": points,
        "drift_threshold": threshold,
        "drift_history": history,
        "drift_record": record,
        "drift_next_floor": None if record is None else selectors.drift_floor(record),
    }


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
    context.update(_trend_context(context["pool"]))
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
    return render(
        request,
        "verification/run_detail.html",
        {
            "run": run,
            "pool": run.pool,
            "inventory": inventory_evidence(run.inventory_match),
            # When the platform tests the pool again is not the operator's to know.
            "show_schedule": registry_selectors.is_platform_staff(request.user),
        },
    )


INVENTORY_FACTS = (
    ("accelerator_model", "Model"),
    ("accelerators_per_node", "Per node"),
    ("nodes", "Nodes"),
)


def inventory_evidence(match: dict[str, Any] | None) -> dict[str, Any] | None:
    """The inventory comparison as a person reads it: a row per fact (declared, reported,
    whether they agree), the mismatches as sentences, what the agent says it is."""
    if not match:
        return None
    declared = match.get("declared") or {}
    reported = match.get("reported") or {}
    rows = [
        {
            "label": label,
            "declared": declared.get(key, "–"),
            "reported": reported.get(key, "–") if reported else "not reported",
            "agrees": bool(reported) and declared.get(key) == reported.get(key),
        }
        for key, label in INVENTORY_FACTS
    ]
    return {
        "agent_id": match.get("agent_id") or "",
        "agent_version": match.get("agent_version") or "",
        "simulated": bool(match.get("simulated")),
        "rows": rows,
        "mismatches": list(match.get("mismatches") or []),
        "pool_key": reported.get("pool_key", "") if reported else "",
        "devices": list(reported.get("device_details") or []) if reported else [],
    }


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
