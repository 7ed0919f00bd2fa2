"""Root URLs: the portal, the REST API (``/api/v1/``), its schema and offline docs."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from interconnect.api_root import ApiRootView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", ApiRootView.as_view(), name="api-root"),
    # Verification first: its pools/{id}/reverify/ sits beside the registry's pool routes.
    path("api/v1/", include("verification.api.urls")),
    path("api/v1/", include("registry.api.urls")),
    path("api/v1/", include("brokers.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("", include("interconnect.portal_urls")),
]
