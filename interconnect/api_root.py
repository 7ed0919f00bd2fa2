"""``GET /api/v1/``: every endpoint of the REST API, as API links.

Built from the API's own URL patterns (registry, verification, brokers), so an endpoint added
there is listed here without another edit; detail routes and format suffixes are left out.
Links are the API's paths, never the portal pages that share a URL name.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

API_PREFIX = "/api/v1/"
API_URLCONFS = ("registry.api.urls", "verification.api.urls", "brokers.api.urls")


def api_endpoints() -> dict[str, str]:
    """Name -> path of every list or plain endpoint of the API (``hubs`` -> ``/api/v1/hubs/``);
    a path with a parameter is shown with it (``quotas/{slug}/``)."""
    from importlib import import_module

    out: dict[str, str] = {}
    for module in API_URLCONFS:
        for pattern in import_module(module).urlpatterns:
            route = str(pattern.pattern)
            if route.startswith("^"):  # a router's regex: keep its list routes only
                route = route.strip("^$")
                if not route or "(" in route or "\\" in route:
                    continue
            route = route.replace("<slug:", "{").replace("<str:", "{").replace(">", "}")
            if "{" in route and route.startswith("pools/"):
                continue  # an action on one pool (reverify): listed under pools
            name = route.strip("/").replace("/{slug}", "").replace("-", "_")
            out.setdefault(name, API_PREFIX + route)
    return dict(sorted(out.items()))


class ApiRootView(APIView):
    """The REST API's endpoints, with links to the schema and the documentation."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    schema = None  # not an operation of the API: left out of the OpenAPI document

    def get(self, request: Request) -> Response:
        links = {name: request.build_absolute_uri(path) for name, path in api_endpoints().items()}
        return Response(
            {
                **links,
                "schema": request.build_absolute_uri("/api/schema/"),
                "docs": request.build_absolute_uri("/api/docs/"),
            }
        )
