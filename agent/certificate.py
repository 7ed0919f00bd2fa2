"""The agent's certificate: a key made here, a CSR sent to the platform, the answer stored.

``obtain_certificate`` makes a new P-256 key, sends a certificate signing request to
``POST /api/v1/centers/{national_id}/certificate/`` (the operator's API token), and writes
``agent.key`` (mode 0600), ``agent.pem`` and ``ca.pem`` into the TLS directory, each replaced
atomically. The key never leaves the machine. Running it again renews: a server that is running
serves the new certificate from its next connection on, heartbeats use it from the next beat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.register import ApiError, api_post


@dataclass(frozen=True)
class Obtained:
    """Where the certificate was written, and what the platform said about it."""

    directory: Path
    serial: str
    identity: str
    not_after: str


def make_request(national_id: str) -> tuple[bytes, bytes]:
    """A new private key and a CSR for it (PEM): the key is for this machine only."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, national_id)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def store(directory: Path, *, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> None:
    """Write the files a running agent reads (the authority's bundle first, then the key and
    the certificate: until both are in place, servers keep the previous pair)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write(directory / "ca.pem", ca_pem, 0o644)
    _write(directory / "agent.key", key_pem, 0o600)
    _write(directory / "agent.pem", cert_pem, 0o644)


def obtain_certificate(
    *, platform_url: str, token: str, center_national_id: str, directory: str | Path
) -> Obtained:
    """Make a key, have the platform sign it for the center, store all three files."""
    key_pem, csr_pem = make_request(center_national_id)
    answer = api_post(
        platform_url,
        f"/api/v1/centers/{center_national_id}/certificate/",
        token,
        {"csr": csr_pem.decode()},
    )
    cert, ca = answer.get("certificate"), answer.get("ca")
    if not isinstance(cert, str) or not isinstance(ca, str):
        raise ApiError("POST", "certificate", 200, {"detail": "no certificate in the answer"})
    store(Path(directory), key_pem=key_pem, cert_pem=cert.encode(), ca_pem=ca.encode())
    return Obtained(
        directory=Path(directory),
        serial=str(answer.get("serial", "")),
        identity=str(answer.get("identity", "")),
        not_after=str(answer.get("not_after", "")),
    )
