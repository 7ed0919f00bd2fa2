"""Portal routes of the broker (included by ``interconnect.portal_urls``)."""

from django.urls import path

from brokers import views

urlpatterns = [
    path("placement/", views.placement, name="placement"),
    path("bookings/", views.booking_list, name="booking-list"),
    path("bookings/new/", views.booking_create, name="booking-create"),
    path("bookings/statuses/", views.booking_statuses, name="booking-statuses"),
    path("bookings/<str:national_id>/", views.booking_detail, name="booking-detail"),
    path("bookings/<str:national_id>/events/", views.booking_events, name="booking-events"),
    path("bookings/<str:national_id>/cancel/", views.booking_cancel, name="booking-cancel"),
    path("bookings/<str:national_id>/offer/", views.booking_offer, name="booking-offer"),
    path("offers/", views.offer_list, name="offer-list"),
    path("offers/<str:national_id>/buy/", views.offer_buy, name="offer-buy"),
    path("offers/<str:national_id>/withdraw/", views.offer_withdraw, name="offer-withdraw"),
]
