"""SSRF guard for addresses the platform connects to on a tenant's word.

Data centers register agent endpoints that Celery workers dial, and organizations register
webhook URLs that workers POST to. Outside development neither may point at loopback, private,
link-local (cloud metadata at 169.254.169.254), multicast, reserved or unspecified addresses,
whether written as an address or as a name that resolves to one. Workers check again right
before connecting (``resolve_public``), so a DNS answer changed after registration (rebinding)
is caught too.
"""

import ipaddress
import socket

from django.core.exceptions import ValidationError


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Only globally routable unicast addresses: this also excludes shared (CGNAT 100.64/10),
    # benchmarking (198.18/15) and documentation ranges that are not "private" strictly speaking.
    return not address.is_global or address.is_multicast


def resolve_public(host: str, port: int, *, field: str, allow_private: bool) -> list[str]:
    """Resolve ``host`` and return its addresses, or raise ``ValidationError`` on ``field`` when
    any of them is not a public address (unless ``allow_private``)."""
    host = host.strip("[]")
    if allow_private:
        # Development and tests: anything goes, and no DNS lookup is made.
        return [host]
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise ValidationError({field: [f"The host {host!r} does not resolve."]}) from None
    addresses = sorted({info[4][0] for info in infos})
    for text in addresses:
        if _forbidden(ipaddress.ip_address(text.split("%")[0])):
            raise ValidationError(
                {field: ["The address is private, loopback, link-local or reserved."]}
            )
    return addresses
