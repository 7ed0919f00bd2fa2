"""Portal pages of the registry."""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from registry import selectors
from registry.models import Hub, HubLink


def dashboard(request: HttpRequest) -> HttpResponse:
    """The national dashboard (public): capacity by hub, model and origin, and verified share."""
    summary = selectors.national_summary()
    return render(
        request,
        "registry/dashboard.html",
        {
            "summary": summary,
            "hubs": Hub.objects.prefetch_related("clusters"),
            "links": HubLink.objects.select_related("a", "b"),
        },
    )
