"""Routes of verification's REST API under ``/api/v1/``."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from verification.api import views

router = SimpleRouter()
router.register("verification-runs", views.VerificationRunViewSet, basename="verificationrun")
router.register("heartbeats", views.HeartbeatViewSet, basename="heartbeat")
router.register("downtimes", views.ScheduledDowntimeViewSet, basename="downtime")

urlpatterns = [
    path(
        "pools/<str:national_id>/reverify/",
        views.PoolReverifyView.as_view(),
        name="api-pool-reverify",
    ),
    path("availability/", views.AvailabilityView.as_view(), name="api-availability"),
    *router.urls,
]
