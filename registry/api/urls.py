"""Routes of the registry's REST API under ``/api/v1/``."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from registry.api import views

router = DefaultRouter()
router.include_root_view = False  # /api/v1/ is interconnect.api_root (every app's endpoints)
router.register("hubs", views.HubViewSet, basename="hub")
router.register("clusters", views.ClusterViewSet, basename="cluster")
router.register("hub-links", views.HubLinkViewSet, basename="hublink")
router.register("accelerators", views.AcceleratorViewSet, basename="accelerator")
router.register("organizations", views.OrganizationViewSet, basename="organization")
router.register("centers", views.CenterViewSet, basename="center")
router.register("pools", views.PoolViewSet, basename="pool")
router.register("changes", views.ChangeRecordViewSet, basename="change")
router.register("tokens", views.ApiTokenViewSet, basename="token")
router.register("webhooks", views.WebhookViewSet, basename="webhook")
router.register("webhook-deliveries", views.WebhookDeliveryViewSet, basename="webhookdelivery")

urlpatterns = [
    path("summary/", views.SummaryView.as_view(), name="summary"),
    *router.urls,
]
