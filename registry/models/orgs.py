"""Tenants: organizations, the users' roles in them, and API tokens."""

import hashlib
import secrets

from django.conf import settings
from django.db import models

from registry.choices import OrgKind, Role


class Organization(models.Model):
    """A tenant: a center operator, an AI firm, or the platform itself.

    Every registry object belongs to exactly one organization; selectors in
    ``registry.selectors`` decide what each organization may see and change.
    """

    slug = models.SlugField(max_length=60, unique=True)
    name = models.CharField(max_length=160, unique=True)
    kind = models.CharField(max_length=10, choices=OrgKind.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_platform(self) -> bool:
        return self.kind == OrgKind.PLATFORM


class Membership(models.Model):
    """A user's role in its organization. A user belongs to one organization."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership"
    )
    organization = models.ForeignKey(
        Organization, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} ({self.role} of {self.organization})"


TOKEN_PREFIX = "ci"


def hash_token_secret(secret: str) -> str:
    """Tokens carry 256 bits of randomness, so a fast hash is enough (no salt or stretching
    needed, unlike passwords); only the hash is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiToken(models.Model):
    """A bearer token for the REST API, the gRPC broker and agents.

    The full token is ``ci_<key_id>_<secret>`` and is shown once at creation. Only ``key_id`` (to
    find the row) and a SHA-256 of the whole token are stored. Revoked tokens keep their row.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tokens"
    )
    name = models.CharField(max_length=100)
    key_id = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.key_id})"

    @staticmethod
    def generate() -> tuple[str, str, str]:
        """Return (full token, key id, digest) for a new token."""
        key_id = secrets.token_hex(6)
        token = f"{TOKEN_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
        return token, key_id, hash_token_secret(token)
