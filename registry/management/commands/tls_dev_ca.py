"""``python manage.py tls_dev_ca [--dir DIR] [--host NAME ...]``: a development authority.

Makes, once, ``ca.key`` (0600) and ``ca.pem`` (a new self-signed authority) and the platform's
``platform.key``/``platform.pem`` in DIR (default ``$PLATFORM_TLS_DIR``, else ``var/tls``);
``--renew-platform`` issues the platform's certificate again (rotation). ``make run``,
``make up`` and the compose file call it so nothing is set up by hand. A production authority
is made and kept offline instead (docs/tls.md).
"""

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.test import override_settings

from registry import certificates


class Command(BaseCommand):
    help = "Create a development certificate authority and the platform's certificate (once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", help="where (default $PLATFORM_TLS_DIR, else var/tls)")
        parser.add_argument(
            "--host", action="append", default=[], help="a DNS name of the platform (repeatable)"
        )
        parser.add_argument(
            "--renew-platform", action="store_true", help="issue the platform's certificate again"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(
            options["dir"] or settings.PLATFORM_TLS_DIR or settings.VAR_DIR / "tls"
        ).resolve()
        with override_settings(
            PLATFORM_TLS_DIR=str(directory), PLATFORM_CA_KEY_FILE="", PLATFORM_CA_CERT_FILE=""
        ):
            made = certificates.ensure_development_tls(directory, hosts=options["host"])
            if options["renew_platform"] and not made:
                certificates.issue_platform_certificate(directory, hosts=options["host"])
                made = True
        state = "made" if made else "already there"
        self.stdout.write(f"development TLS in {directory} ({state}): ca.pem, platform.pem")
