"""Routes of the broker's REST API under ``/api/v1/``."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from brokers.api import views

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("bookings", views.BookingViewSet, basename="booking")
router.register("offers", views.OfferViewSet, basename="offer")

urlpatterns = [
    path("capacity/", views.CapacityView.as_view(), name="capacity"),
    path("placements/", views.PlacementView.as_view(), name="placements"),
    path("usage/", views.UsageView.as_view(), name="usage"),
    path("quotas/<slug:slug>/", views.QuotaView.as_view(), name="quota"),
    path("priority-grants/<slug:slug>/", views.PriorityGrantView.as_view(), name="priority-grant"),
    path("booking-classes/", views.BookingClassView.as_view(), name="booking-classes"),
    *router.urls,
]
