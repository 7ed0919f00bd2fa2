"""Certificates the platform's authority issued to centers' site agents (public parts only)."""

from django.conf import settings
from django.db import models

from .centers import Center


class AgentCertificate(models.Model):
    """One certificate issued to a center's agent: what it names, until when, and whether it
    was revoked. The private key never reaches the platform (the agent sends a CSR), and the
    authority's own key is never stored here (``registry.certificates``)."""

    center = models.ForeignKey(Center, on_delete=models.PROTECT, related_name="certificates")
    serial = models.CharField(max_length=40, unique=True)  # hex, as `openssl x509 -serial`
    fingerprint_sha256 = models.CharField(max_length=64)
    certificate_pem = models.TextField()
    not_before = models.DateTimeField()
    not_after = models.DateTimeField(db_index=True)
    issued_at = models.DateTimeField(auto_now_add=True)
    issued_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revocation_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-issued_at"]

    def __str__(self) -> str:
        return f"{self.center.national_id} certificate {self.serial}"

    @property
    def change_log_owner(self) -> object:
        return self.center.operator
