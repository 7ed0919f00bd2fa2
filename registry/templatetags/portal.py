"""Template helpers of the portal: status badges and the signed-in user's role for navigation."""

from typing import Any

from django import template
from django.utils.html import format_html

from registry import selectors
from registry.choices import STATUS_COLORS, Status

register = template.Library()


@register.filter
def badge(status: str) -> str:
    """A coloured status badge (colours from ``registry.choices.STATUS_COLORS``)."""
    label = Status(status).label if status in Status.values else status
    return format_html(
        '<span class="badge {}" data-status="{}">{}</span>',
        STATUS_COLORS.get(status, "gray"),
        status,
        label,
    )


@register.simple_tag(takes_context=True)
def portal_role(context: dict[str, Any]) -> dict[str, Any]:
    """What the navigation offers the signed-in user (computed once per page)."""
    user = context.get("user")
    org = selectors.organization_of(user)
    return {
        "org": org,
        "operator": selectors.can_operate(user),
        "ai_firm": org is not None and org.kind == "ai_firm",
        "staff": selectors.is_platform_staff(user),
        "admin": selectors.is_org_admin(user),
    }


@register.filter
def percent(value: float | None) -> str:
    return "–" if value is None else f"{value * 100:.0f}%"


@register.filter
def ratio(value: float | str | None) -> str:
    """A small ratio as a plain decimal (``9e-06`` reads ``0.000009``), "–" when unknown."""
    if value is None or value == "":
        return "–"
    number = float(value)
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("0", "-0") or number == 0 else f"{number:.1e}"


@register.filter
def counted(n: int | None, words: str) -> str:
    """``{{ n|counted:"pool,pools" }}``: "1 pool", "3 pools" (the number, then the right word)."""
    one, _, many = words.partition(",")
    n = n or 0
    return f"{n} {one if n == 1 else (many or one + 's')}"
