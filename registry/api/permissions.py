"""Permission classes: who may write. Which objects is decided by selectors."""

from typing import Any

from rest_framework import permissions
from rest_framework.request import Request

from registry import selectors


class OperatorWritePermission(permissions.BasePermission):
    """Anyone may read; only operators (and platform staff) may write."""

    message = "Only center operators may change compute capacity."

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in permissions.SAFE_METHODS:
            return True
        return bool(request.user and request.user.is_authenticated) and selectors.can_operate(
            request.user
        )


class OrgAdminPermission(permissions.BasePermission):
    """Organization settings (webhooks) are for the organization's admins."""

    message = "Only an organization admin may manage this."

    def has_permission(self, request: Request, view: Any) -> bool:
        return selectors.is_org_admin(request.user)
