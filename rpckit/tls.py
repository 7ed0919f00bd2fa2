"""Identities in certificates, and gRPC credentials made from certificate files.

Every party of the platform holds a certificate of the platform's certificate authority:

- a center's site agent: URI SAN ``spiffe://interconnect.cn/center/<national id>`` and DNS SAN
  ``<national id, lower case>.center.interconnect.cn`` (client and server use);
- the platform (verifier, dispatch, telemetry): URI SAN ``spiffe://interconnect.cn/platform``
  and DNS SAN ``platform.interconnect.cn``.

A client that dials a party names the DNS SAN it expects (``grpc.ssl_target_name_override``), so
the TLS handshake itself refuses a certificate of anyone else, even one of the same authority; a
server reads the caller's URI SAN from the call's auth context. Expiry is checked by the
handshake; revocation by the platform's own list (``registry.certificates``).

Files are read when credentials are made, and servers re-read them when they change
(:class:`ReloadingServerCredentials`): renewing a certificate is writing new files, no restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

logger = logging.getLogger(__name__)

TRUST_DOMAIN = "interconnect.cn"
CENTER_URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/center/"
PLATFORM_URI = f"spiffe://{TRUST_DOMAIN}/platform"
PLATFORM_DNS_NAME = f"platform.{TRUST_DOMAIN}"
CENTER_DNS_SUFFIX = f".center.{TRUST_DOMAIN}"


class TlsError(Exception):
    """Certificate files that cannot be used, or a peer whose certificate is refused; the
    message says which and why."""


def center_uri(national_id: str) -> str:
    """The URI SAN naming a center's agent."""
    return CENTER_URI_PREFIX + national_id


def center_dns_name(national_id: str) -> str:
    """The DNS SAN naming a center's agent (what the platform expects when it dials it)."""
    return national_id.lower() + CENTER_DNS_SUFFIX


def load_certificate(pem: bytes) -> x509.Certificate:
    """The first certificate of a PEM bundle (TlsError if there is none)."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TlsError(f"not a PEM certificate: {exc}") from None


def uri_names(certificate: x509.Certificate) -> list[str]:
    """The certificate's URI subject alternative names."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(extension.value.get_values_for_type(x509.UniformResourceIdentifier))


def identity_of(pem: bytes | str | None) -> str | None:
    """The platform identity (a ``spiffe://interconnect.cn/...`` URI) a PEM certificate names."""
    if not pem:
        return None
    raw = pem.encode() if isinstance(pem, str) else pem
    try:
        names = uri_names(load_certificate(raw))
    except TlsError:
        return None
    return next((n for n in names if n.startswith(f"spiffe://{TRUST_DOMAIN}/")), None)


def center_of(pem: bytes | str | None) -> str | None:
    """The national id of the center a certificate names, or None."""
    identity = identity_of(pem)
    if identity and identity.startswith(CENTER_URI_PREFIX):
        return identity.removeprefix(CENTER_URI_PREFIX) or None
    return None


def peer_pem(context: grpc.ServicerContext) -> bytes | None:
    """The PEM of the certificate the caller presented (mutual TLS), or None."""
    values: bytes | list[bytes] = (context.auth_context() or {}).get("x509_pem_cert") or []
    if isinstance(values, bytes):
        return values
    return bytes(values[0]) if values else None


def describe(certificate: x509.Certificate) -> str:
    """serial, identity and expiry, for logs and messages."""
    names = uri_names(certificate) or [certificate.subject.rfc4514_string()]
    return (
        f"serial {certificate.serial_number:x} ({names[0]}), valid until "
        f"{certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )


@dataclass(frozen=True)
class KeyMaterial:
    """A certificate chain, its private key and the trust bundle, as PEM bytes."""

    cert: bytes
    key: bytes
    ca: bytes | None

    @property
    def certificate(self) -> x509.Certificate:
        return load_certificate(self.cert)


@dataclass(frozen=True)
class CertFiles:
    """Where a party keeps its certificate, its key and the authority's bundle it trusts
    (``ca`` may be None for a server that does not ask for client certificates)."""

    cert: Path
    key: Path
    ca: Path | None = None

    @classmethod
    def in_dir(cls, directory: str | Path, name: str) -> CertFiles:
        """``<dir>/<name>.pem``, ``<dir>/<name>.key`` and ``<dir>/ca.pem``."""
        base = Path(directory)
        return cls(cert=base / f"{name}.pem", key=base / f"{name}.key", ca=base / "ca.pem")

    def paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.ca) if p is not None]

    def exist(self) -> bool:
        return all(p.is_file() for p in self.paths())

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """What changes when any of the files is replaced (OSError if one is missing)."""
        return tuple((s.st_mtime_ns, s.st_size) for s in (p.stat() for p in self.paths()))

    def read(self) -> KeyMaterial:
        """Read the files and check that the key belongs to the certificate."""
        try:
            material = KeyMaterial(
                cert=self.cert.read_bytes(),
                key=self.key.read_bytes(),
                ca=self.ca.read_bytes() if self.ca is not None else None,
            )
        except OSError as exc:
            raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
        try:
            key = serialization.load_pem_private_key(material.key, password=None)
        except (ValueError, TypeError) as exc:
            raise TlsError(f"{self.key} is not an unencrypted PEM private key: {exc}") from None
        public = material.certificate.public_key()
        encoding, fmt = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(encoding, fmt) != public.public_bytes(encoding, fmt):
            raise TlsError(f"{self.key} is not the key of {self.cert}")
        if material.ca is not None:
            load_certificate(material.ca)
        return material


def expiry_warning(material: KeyMaterial, *, now: dt.datetime | None = None) -> str | None:
    """A message when the certificate is expired or in the last third of its life."""
    certificate = material.certificate
    now = now or dt.datetime.now(dt.UTC)
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now >= end:
        return f"the certificate has expired: {describe(certificate)}"
    if now >= end - (end - start) / 3:
        return f"the certificate is due for renewal: {describe(certificate)}"
    return None


class ReloadingServerCredentials:
    """Server credentials that pick up renewed files at the next connection, without a restart.

    gRPC calls the fetcher before every new handshake; it re-reads the files only when they
    changed and keeps the current certificate while the new files are incomplete (a key that is
    not the certificate's, a missing file): connections open meanwhile keep theirs.
    """

    def __init__(self, files: CertFiles, *, require_client_auth: bool) -> None:
        if require_client_auth and files.ca is None:
            raise TlsError("mutual TLS needs the authority's bundle (ca.pem)")
        self.files = files
        self.reloads = 0
        self._stamp = files.stamp() if files.exist() else ()
        self.material = files.read()
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(self.material),
            self._fetch,  # type: ignore[arg-type]  # None means "no change" (gRPC's docs)
            require_client_authentication=require_client_auth,
        )

    @staticmethod
    def _configuration(material: KeyMaterial) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.cert)], root_certificates=material.ca
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self.files.stamp()
        except OSError:
            return None
        if stamp == self._stamp:
            return None
        try:
            material = self.files.read()
        except TlsError as exc:
            logger.warning("certificate files changed but cannot be used yet: %s", exc)
            return None
        self._stamp, self.material = stamp, material
        self.reloads += 1
        logger.info("reloaded the certificate: %s", describe(material.certificate))
        return self._configuration(material)


def channel_credentials(files: CertFiles) -> grpc.ChannelCredentials:
    """Client credentials: trust the files' bundle, present the files' certificate."""
    material = files.read()
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca, private_key=material.key, certificate_chain=material.cert
    )


def name_options(server_name: str) -> list[tuple[str, str]]:
    """Channel options that make the handshake require ``server_name`` in the peer's
    certificate (whatever address is dialled)."""
    return [("grpc.ssl_target_name_override", server_name)]


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def peer_certificate(
    address: str, files: CertFiles, *, server_name: str, timeout: float = 5.0
) -> x509.Certificate:
    """Shake hands with ``address`` as the holder of ``files`` and return the certificate the
    peer presented, once the authority's bundle has verified it (expiry included). TlsError says
    why the peer is refused; OSError when it cannot be reached at all."""
    material = files.read()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # checked below, with a message that names both sides
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=(material.ca or b"").decode())
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["h2"])
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=server_name) as tls:
                der = tls.getpeercert(binary_form=True)
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(f"its certificate is refused: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise TlsError(f"the TLS handshake failed: {exc.reason or exc}") from None
    if not der:
        raise TlsError("it presented no certificate")
    return x509.load_der_x509_certificate(der)
