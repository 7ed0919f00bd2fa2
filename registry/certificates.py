"""The platform's certificate authority: certificates for centers' site agents and the platform.

The authority's key comes from a file (``PLATFORM_CA_KEY_FILE``) or an environment secret
(``PLATFORM_CA_KEY``, PEM), optionally encrypted (``PLATFORM_CA_KEY_PASSPHRASE``); it is never
written to the database, which keeps only the issued certificates (public) and their revocation.
The authority's certificate is ``PLATFORM_CA_CERT_FILE`` (default ``<PLATFORM_TLS_DIR>/ca.pem``,
which may hold several authorities while one is rotated out: the issuing one is the one whose
key is loaded).

A center's certificate (``center_certificate_issue``) is made from a CSR: the agent makes its key
and never sends it. Whatever the CSR asks for, the certificate names exactly the center
(``spiffe://interconnect.cn/center/<national id>`` and ``<national id>.center.interconnect.cn``),
serves as client and server, and is valid ``AGENT_CERT_DAYS`` days. Renewal is another CSR;
revocation (``certificate_revoke``) is checked by every platform server that reads an agent's
certificate (``refusal``) and by the platform before it dials an agent.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from registry import selectors
from registry.actors import Actor, signed_in
from registry.choices import ChangeAction, Door
from registry.errors import NoCertificateAuthority
from registry.models import AgentCertificate, Center
from rpckit.tls import (
    PLATFORM_DNS_NAME,
    PLATFORM_URI,
    CertFiles,
    center_dns_name,
    center_uri,
    load_certificate,
)

logger = logging.getLogger(__name__)

MAX_CSR_BYTES = 16 * 1024
CA_DAYS = 3650
PLATFORM_CERT_DAYS = 90


# --- the authority ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """The issuing certificate and its key, and the bundle every party trusts."""

    certificate: x509.Certificate
    key: Any
    bundle_pem: bytes


def tls_dir() -> Path:
    return Path(settings.PLATFORM_TLS_DIR)


def platform_files() -> CertFiles:
    """The platform's own certificate (client of agents, server of telemetry)."""
    return CertFiles.in_dir(tls_dir(), "platform")


def mutual_tls() -> bool:
    """True when the platform speaks mutual TLS with agents (its certificate files exist)."""
    return bool(settings.PLATFORM_TLS_DIR) and platform_files().exist()


def _key_pem() -> bytes:
    secret = os.environ.get("PLATFORM_CA_KEY", "")
    if secret:
        return secret.encode()
    path = settings.PLATFORM_CA_KEY_FILE or (tls_dir() / "ca.key" if tls_dir() else "")
    if not path or not Path(path).is_file():
        raise ImproperlyConfigured(
            "the certificate authority's key is not configured: set PLATFORM_CA_KEY_FILE or "
            "PLATFORM_CA_KEY (docs/tls.md)"
        )
    return Path(path).read_bytes()


@lru_cache(maxsize=1)
def _authority_cached(stamp: tuple[Any, ...]) -> Authority:
    passphrase = os.environ.get("PLATFORM_CA_KEY_PASSPHRASE", "").encode() or None
    key = serialization.load_pem_private_key(_key_pem(), password=passphrase)
    bundle_path = Path(settings.PLATFORM_CA_CERT_FILE or tls_dir() / "ca.pem")
    bundle = bundle_path.read_bytes()
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for certificate in x509.load_pem_x509_certificates(bundle):
        spki = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if spki == public:
            return Authority(certificate=certificate, key=key, bundle_pem=bundle)
    raise ImproperlyConfigured(f"no certificate in {bundle_path} matches the authority's key")


def authority() -> Authority:
    """The configured authority (re-read when its files change: rotation without restart)."""
    paths = [
        Path(p)
        for p in (
            settings.PLATFORM_CA_KEY_FILE,
            settings.PLATFORM_CA_CERT_FILE,
            tls_dir() / "ca.pem" if settings.PLATFORM_TLS_DIR else "",
            tls_dir() / "ca.key" if settings.PLATFORM_TLS_DIR else "",
        )
        if p
    ]
    stamp = tuple((str(p), p.stat().st_mtime_ns) if p.is_file() else (str(p), 0) for p in paths) + (
        hashlib.sha256(os.environ.get("PLATFORM_CA_KEY", "").encode()).hexdigest(),
    )
    return _authority_cached(stamp)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically (readers see the old file or the new one, never half)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def create_authority(directory: Path, *, common_name: str = "Interconnect development CA") -> None:
    """A new self-signed authority: ``ca.key`` (0600) and ``ca.pem`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(directory / "ca.key", key_pem(key), 0o600)
    _write(directory / "ca.pem", cert_pem(certificate), 0o644)


def _sign(
    ca: Authority,
    public_key: Any,
    *,
    common_name: str,
    uris: list[str],
    dns_names: list[str],
    days: float,
    not_before: dt.datetime | None = None,
) -> x509.Certificate:
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns_names]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def issue_platform_certificate(
    directory: Path, *, hosts: list[str] | None = None, days: float = PLATFORM_CERT_DAYS
) -> x509.Certificate:
    """The platform's own key and certificate (``platform.key``, ``platform.pem``): names the
    platform, and ``hosts`` (DNS names) for clients that dial it by name (browsers, programs)."""
    key = new_key()
    names = [PLATFORM_DNS_NAME, "localhost", *(hosts or [])]
    certificate = _sign(
        authority(),
        key.public_key(),
        common_name="Interconnect platform",
        uris=[PLATFORM_URI],
        dns_names=list(dict.fromkeys(names)),
        days=days,
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "platform.key", key_pem(key), 0o600)
    _write(directory / "platform.pem", cert_pem(certificate), 0o644)
    return certificate


def ensure_development_tls(directory: Path, *, hosts: list[str] | None = None) -> bool:
    """A development authority and platform certificate in ``directory``, made once (returns
    True when it made them). Never for production: there the authority is kept offline."""
    made = False
    if not (directory / "ca.pem").is_file() or not (directory / "ca.key").is_file():
        create_authority(directory)
        made = True
    if made or not CertFiles.in_dir(directory, "platform").exist():
        issue_platform_certificate(directory, hosts=hosts)
        made = True
    return made


# --- centers' certificates -------------------------------------------------------------------


def _load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    if not csr_pem or len(csr_pem) > MAX_CSR_BYTES:
        message = f"A PEM certificate signing request of at most {MAX_CSR_BYTES} bytes is required."
        raise ValidationError({"csr": [message]})
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise ValidationError({"csr": ["Not a PEM certificate signing request."]}) from None
    if not csr.is_signature_valid:
        raise ValidationError({"csr": ["The request's signature does not verify."]})
    public = csr.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        raise ValidationError({"csr": ["RSA keys must be at least 2048 bits."]})
    if not isinstance(public, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValidationError({"csr": ["The key must be EC (P-256 or larger) or RSA."]})
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.key_size < 256:
        raise ValidationError({"csr": ["EC keys must be P-256 or larger."]})
    return csr


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def center_certificate_issue(
    *,
    center: Center,
    actor: Actor | None,
    csr_pem: str,
    door: Door,
    days: float | None = None,
    not_before: dt.datetime | None = None,
) -> tuple[AgentCertificate, bytes]:
    """Sign the agent's CSR for ``center``; returns the row and the authority's bundle.

    Only an operator of the center (or platform staff; ``actor`` None for the platform's own
    launchers) may ask. The CSR only contributes its key: the names and usages are the
    platform's.
    """
    from registry.services import change_record

    if actor is not None and not selectors.centers_editable_by(actor).filter(pk=center.pk).exists():
        raise PermissionDenied("Only the center's operator may obtain its agent certificate.")
    csr = _load_csr(csr_pem)
    try:
        ca = authority()
    except ImproperlyConfigured as exc:
        raise NoCertificateAuthority() from exc
    certificate = _sign(
        ca,
        csr.public_key(),
        common_name=center.national_id,
        uris=[center_uri(center.national_id)],
        dns_names=[center_dns_name(center.national_id)],
        days=float(settings.AGENT_CERT_DAYS if days is None else days),
        not_before=not_before,
    )
    with transaction.atomic():
        row = AgentCertificate.objects.create(
            center=center,
            serial=f"{certificate.serial_number:x}",
            fingerprint_sha256=_fingerprint(certificate),
            certificate_pem=cert_pem(certificate).decode(),
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
            issued_by=signed_in(actor),
        )
        change_record(
            obj=row,
            action=ChangeAction.CREATE,
            actor=actor,
            door=door,
            before=None,
            after={"serial": row.serial, "not_after": row.not_after.isoformat()},
        )
    logger.info(
        "issued certificate %s for %s, valid until %s",
        row.serial,
        center.national_id,
        row.not_after,
    )
    return row, ca.bundle_pem


def certificate_revoke(
    *, certificate: AgentCertificate, actor: Actor | None, reason: str, door: Door
) -> AgentCertificate:
    """Revoke a center's certificate (idempotent: a revoked one keeps its first revocation)."""
    from registry.services import change_record

    if (
        actor is not None
        and not selectors.centers_editable_by(actor).filter(pk=certificate.center_id).exists()
    ):
        raise PermissionDenied("Only the center's operator may revoke its certificates.")
    with transaction.atomic():
        row = AgentCertificate.objects.select_for_update().get(pk=certificate.pk)
        if row.revoked_at is None:
            row.revoked_at = timezone.now()
            row.revocation_reason = (reason or "revoked")[:200]
            row.save(update_fields=["revoked_at", "revocation_reason"])
            change_record(
                obj=row,
                action=ChangeAction.UPDATE,
                actor=actor,
                door=door,
                before={"revoked_at": None},
                after={"revoked_at": row.revoked_at.isoformat(), "reason": row.revocation_reason},
            )
            logger.warning("revoked certificate %s of %s: %s", row.serial, row.center, reason)
    return row


def refusal(pem: bytes | str | None, *, center_national_id: str | None = None) -> str | None:
    """Why an agent's certificate must be refused (revoked, unknown to the registry, expired,
    or naming another center than ``center_national_id``), or None when it is good."""
    if not pem:
        return "no certificate was presented"
    certificate = load_certificate(pem.encode() if isinstance(pem, str) else pem)
    serial = f"{certificate.serial_number:x}"
    row = AgentCertificate.objects.filter(serial=serial).select_related("center").first()
    if row is None or row.fingerprint_sha256 != _fingerprint(certificate):
        return f"certificate {serial} was not issued by this platform's registry"
    if row.revoked_at is not None:
        return (
            f"certificate {serial} of {row.center.national_id} was revoked at "
            f"{row.revoked_at:%Y-%m-%d %H:%M:%S} UTC ({row.revocation_reason})"
        )
    if certificate.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return f"certificate {serial} of {row.center.national_id} has expired"
    if center_national_id and row.center.national_id != center_national_id:
        return f"certificate {serial} names {row.center.national_id}, not {center_national_id}"
    return None


# --- dialling an agent -----------------------------------------------------------------------


class AgentIdentityRefused(Exception):
    """The agent at the center's endpoint is not that center's agent, or its certificate is
    expired, revoked or unknown: the message says which (a permanent refusal)."""


def agent_credentials(center_national_id: str) -> tuple[Any, list[tuple[str, str]]]:
    """Channel credentials (the platform's certificate) and the options that make the TLS
    handshake accept only a certificate naming ``center_national_id``."""
    from rpckit.tls import channel_credentials, name_options

    return channel_credentials(platform_files()), name_options(center_dns_name(center_national_id))


def check_agent(address: str, center_national_id: str, *, timeout: float) -> None:
    """Shake hands with the agent at ``address`` and refuse it unless its certificate is of the
    authority, current, not revoked, known to the registry, and names ``center_national_id``.

    The gRPC channel checks the name again (``agent_credentials``); this check is what gives a
    refusal its reason. AgentIdentityRefused when refused; OSError when unreachable.
    """
    from rpckit.tls import TlsError, center_of, peer_certificate

    try:
        peer = peer_certificate(
            address,
            platform_files(),
            server_name=center_dns_name(center_national_id),
            timeout=timeout,
        )
    except TlsError as exc:
        logger.warning("agent of %s at %s refused: %s", center_national_id, address, exc)
        raise AgentIdentityRefused(f"the agent at {address} is refused: {exc}") from None
    pem = cert_pem(peer)
    named = center_of(pem)
    problem = None
    if named != center_national_id:
        problem = (
            f"the agent at {address} presents a certificate of {named or 'no center'}, "
            f"not of {center_national_id}"
        )
    else:
        problem = refusal(pem, center_national_id=center_national_id)
    if problem:
        logger.warning("agent of %s at %s refused: %s", center_national_id, address, problem)
        raise AgentIdentityRefused(problem)
