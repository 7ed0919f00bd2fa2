"""Portal routes. Each app contributes its pages; the dashboard lives at ``/``."""

from django.contrib.auth import views as auth_views
from django.urls import include, path

from brokers import views as brokers_views
from interconnect import health
from registry import views as registry_views
from verification import views as verification_views

urlpatterns = [
    # Pages that compose several apps are served by the app highest in the dependency order
    # (brokers -> verification -> registry); each app's own views render its part alone.
    path("", brokers_views.dashboard, name="dashboard"),
    path("capacity/", brokers_views.capacity_search, name="capacity-search"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", health.liveness, name="healthz"),
    path("readyz", health.readiness, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    # (centers/new/ first: the detail pattern below would take "new" for a national id.)
    path("centers/new/", registry_views.center_register, name="center-register"),
    path("centers/<str:national_id>/", verification_views.center_detail, name="center-detail"),
    path("pools/<str:national_id>/", verification_views.pool_detail, name="pool-detail"),
    path("", include("brokers.portal_urls")),
    path("", include("verification.portal_urls")),
    path("", include("registry.portal_urls")),
]
