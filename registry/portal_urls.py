"""Portal routes of the registry (included by ``interconnect.portal_urls``)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from registry import views

urlpatterns = [
    path("capacity/", views.capacity_search, name="capacity-search"),
    path("centers/", views.center_list, name="center-list"),
    path("centers/new/", views.center_register, name="center-register"),
    path("centers/<str:national_id>/", views.center_detail, name="center-detail"),
    path("centers/<str:national_id>/pools/new/", views.pool_create, name="pool-create"),
    path("pools/", views.pool_list, name="pool-list"),
    path("pools/<str:national_id>/", views.pool_detail, name="pool-detail"),
    path("pools/<str:national_id>/status/", views.pool_status, name="pool-status"),
    path("pools/<str:national_id>/submit/", views.pool_submit, name="pool-submit"),
    path("pools/<str:national_id>/transition/", views.pool_transition, name="pool-transition"),
    path("changes/", views.change_list, name="change-list"),
    path("organization/", views.organization, name="organization"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<str:key_id>/revoke/", views.token_revoke, name="token-revoke"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(success_url="/organization/"),
        name="password-change",
    ),
]
