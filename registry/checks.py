"""System checks of the deployment (``manage.py check --deploy``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register


@register(Tags.security, deploy=True)
def production_speaks_mutual_tls(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """In production the platform must speak mutual TLS with agents: without it the verifier
    cannot tell whose agent answers (a center could name another center's agent as its own and
    be verified on that hardware), and agents cannot tell the platform from anyone else."""
    from registry import certificates

    if not settings.PRODUCTION or certificates.mutual_tls():
        return []
    return [
        Error(
            "DJANGO_PRODUCTION=1 without mutual TLS with agents",
            hint=(
                "set PLATFORM_TLS_DIR to a folder holding ca.pem, platform.pem and platform.key "
                "(docs/tls.md); without them any agent can answer for any center"
            ),
            id="interconnect.E001",
        )
    ]
