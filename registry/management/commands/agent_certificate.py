"""``python manage.py agent_certificate``: a center's agent certificate from the platform's side.

    manage.py agent_certificate --center CN-NX-ZW-0001 --out DIR [--if-missing] [--days N]
    manage.py agent_certificate --center CN-NX-ZW-0001 --list
    manage.py agent_certificate --revoke SERIAL [--reason TEXT]

``--out`` makes the key *here* and writes ``agent.key``, ``agent.pem`` and ``ca.pem`` into DIR:
for launchers that run the agent on the platform's own machines (``make run``'s demo agents, the
compose file's). A real center runs ``python -m agent certificate`` on its agent's machine
instead, so that its key never leaves it (docs/tls.md). ``--if-missing`` keeps a certificate
that is there and not due for renewal.
"""

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agent.certificate import make_request, store
from registry import certificates
from registry.choices import Door
from registry.errors import NoCertificateAuthority
from registry.models import AgentCertificate, Center
from rpckit.tls import CertFiles, TlsError, expiry_warning


def issue_into(center: Center, directory: Path, *, days: float | None = None) -> AgentCertificate:
    """Issue ``center``'s certificate with a key made here, stored in ``directory``."""
    key_pem, csr_pem = make_request(center.national_id)
    row, bundle = certificates.center_certificate_issue(
        center=center, actor=None, csr_pem=csr_pem.decode(), door=Door.CLI, days=days
    )
    store(directory, key_pem=key_pem, cert_pem=row.certificate_pem.encode(), ca_pem=bundle)
    return row


def current(directory: Path, center: Center) -> bool:
    """True when DIR holds a usable certificate of ``center``, not yet due for renewal, that
    this registry would accept: the folder may outlive the database that issued it (another
    ``INTERCONNECT_VAR_DIR``, a re-seeded demo), or the certificate may have been revoked."""
    try:
        material = CertFiles.in_dir(directory, "agent").read()
    except TlsError:
        return False
    if expiry_warning(material) is not None:
        return False
    pem = (directory / "agent.pem").read_bytes()
    return certificates.refusal(pem, center_national_id=center.national_id) is None


class Command(BaseCommand):
    help = "Issue, list or revoke centers' agent certificates."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--center", help="the center's national id")
        parser.add_argument("--out", help="issue: write agent.key, agent.pem and ca.pem here")
        parser.add_argument("--if-missing", action="store_true")
        parser.add_argument("--days", type=float, help="validity (default AGENT_CERT_DAYS)")
        parser.add_argument("--list", action="store_true", help="list the center's certificates")
        parser.add_argument("--revoke", metavar="SERIAL", help="revoke a certificate by serial")
        parser.add_argument("--reason", default="revoked by the platform")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["revoke"]:
            row = AgentCertificate.objects.filter(serial=options["revoke"].lower()).first()
            if row is None:
                raise CommandError(f"no certificate with serial {options['revoke']}")
            certificates.certificate_revoke(
                certificate=row, actor=None, reason=options["reason"], door=Door.CLI
            )
            self.stdout.write(f"revoked {row.serial} of {row.center.national_id}")
            return
        center = Center.objects.filter(national_id=options["center"] or "").first()
        if center is None:
            raise CommandError(f"no center {options['center']!r}: give --center NATIONAL_ID")
        if options["list"]:
            for row in center.certificates.all():
                state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "valid"
                self.stdout.write(f"{row.serial} until {row.not_after:%Y-%m-%d %H:%M} {state}")
            return
        if not options["out"]:
            raise CommandError("give --out DIR (issue), --list or --revoke SERIAL")
        directory = Path(options["out"])
        if options["if_missing"] and current(directory, center):
            self.stdout.write(f"{directory} already holds a current certificate")
            return
        try:
            row = issue_into(center, directory, days=options["days"])
        except NoCertificateAuthority as exc:
            raise CommandError(f"{exc} {exc.__cause__}") from exc
        self.stdout.write(
            f"certificate {row.serial} for {center.national_id} until {row.not_after:%Y-%m-%d} "
            f"in {directory}"
        )
