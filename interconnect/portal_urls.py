"""Portal routes. Each app contributes its pages; the dashboard lives at ``/``."""

from django.contrib.auth import views as auth_views
from django.urls import path

from interconnect import health
from registry import views as registry_views

urlpatterns = [
    path("", registry_views.dashboard, name="dashboard"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", health.liveness, name="healthz"),
    path("readyz", health.readiness, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
]
