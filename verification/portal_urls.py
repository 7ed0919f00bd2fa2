"""Portal routes of verification (included by ``interconnect.portal_urls``)."""

from django.urls import path

from verification import views

urlpatterns = [
    path("pools/<str:national_id>/reverify/", views.pool_reverify, name="pool-reverify"),
    path("pools/<str:national_id>/downtime/", views.downtime_declare, name="downtime-declare"),
    path(
        "centers/<str:national_id>/downtime/",
        views.center_downtime_declare,
        name="center-downtime-declare",
    ),
    path("runs/<str:run_id>/", views.run_detail, name="run-detail"),
]
