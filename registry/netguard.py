"""The outbound-connection guard: every connection the platform makes on a tenant's word.

Data centers register agent endpoints that workers dial (verification, dispatch), and
organizations register webhook URLs that workers POST to. Outside development none may reach
loopback, private, link-local (cloud metadata at 169.254.169.254), multicast, reserved or
unspecified addresses, whether written as an address or as a name that resolves to one.

Registration checks once (``resolve_public``, a field error). The check that matters is the one
at connect time, and it must be about the address actually dialled: a name resolved twice (once
to check, once by the client library) can answer a public address the first time and a private
one the second (DNS rebinding). So the guard resolves once, checks every answer, and hands back
the address to connect to:

- ``outbound_target(endpoint, allow_private=...)`` -> ``"ip:port"`` for gRPC (dial it with
  ``grpc_authority_options(endpoint)`` so ``:authority`` still names the host);
- ``outbound_post(url, ..., allow_private=...)`` -> an ``httpx.Response``: the POST goes to the
  checked address with the URL's ``Host`` header and TLS server name, never follows a redirect
  (a 3xx is the answer) and ignores proxy variables of the environment.

``allow_private`` (development and tests) skips the check and the lookup: the name is dialled as
written.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping

import httpx
from django.core.exceptions import ValidationError


class OutboundRefused(Exception):
    """The guard refused to connect; ``transient`` when a later attempt may succeed (no DNS
    answer right now) rather than never (a forbidden address, a malformed endpoint)."""

    transient = False


class TargetUnresolved(OutboundRefused):
    """The name does not resolve (DNS may be down for a moment)."""

    transient = True


class TargetForbidden(OutboundRefused):
    """The target is not a public unicast address, or is not a valid endpoint or URL."""


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    # Only globally routable unicast addresses: this also excludes shared (CGNAT 100.64/10),
    # benchmarking (198.18/15) and documentation ranges that are not "private" strictly speaking.
    return not address.is_global or address.is_multicast


def checked_addresses(host: str, port: int) -> list[str]:
    """Resolve ``host`` once and return its addresses in the resolver's order, or raise
    ``TargetUnresolved`` / ``TargetForbidden`` when any answer is not a public address."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise TargetUnresolved(f"the host {host!r} does not resolve") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise TargetUnresolved(f"the host {host!r} does not resolve")
    for text in addresses:
        if _forbidden(ipaddress.ip_address(text.split("%")[0])):
            raise TargetForbidden(
                f"{host!r} is a private, loopback, link-local or reserved address ({text})"
            )
    return addresses


def resolve_public(host: str, port: int, *, field: str, allow_private: bool) -> list[str]:
    """Registration-time check: the addresses of ``host``, or a ``ValidationError`` on ``field``
    when any of them is not a public address (unless ``allow_private``)."""
    host = host.strip("[]")
    if allow_private:
        # Development and tests: anything goes, and no DNS lookup is made.
        return [host]
    try:
        return sorted(checked_addresses(host, port))
    except TargetUnresolved:
        raise ValidationError({field: [f"The host {host!r} does not resolve."]}) from None
    except TargetForbidden:
        raise ValidationError(
            {field: ["The address is private, loopback, link-local or reserved."]}
        ) from None


def _join(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def outbound_target(endpoint: str, *, allow_private: bool) -> str:
    """The address to dial for an agent endpoint ``host:port``, checked right now.

    Returns ``"ip:port"`` (``"[ip6]:port"``), the first answer of one DNS lookup whose answers
    are all public; the endpoint itself when ``allow_private``. Raises ``TargetForbidden`` for a
    malformed endpoint or a private answer, ``TargetUnresolved`` when the name does not resolve.
    """
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise TargetForbidden(f"agent endpoint {endpoint!r} is not host:port")
    if allow_private:
        return endpoint
    return _join(checked_addresses(host, int(port))[0], int(port))


def grpc_authority_options(endpoint: str) -> list[tuple[str, str]]:
    """Channel options that keep ``:authority`` on the registered name when dialling the
    address ``outbound_target`` returned."""
    return [("grpc.default_authority", endpoint)]


def outbound_post(
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout: float,
    allow_private: bool,
) -> httpx.Response:
    """POST ``content`` to ``url`` at the address checked right now, without following redirects.

    The URL's host is resolved once and checked; the request connects to that address, with the
    original ``Host`` header and (for https) the original name as TLS server name, so the
    certificate is verified against the name. A 3xx is returned as is. Raises
    ``OutboundRefused`` before connecting, or ``httpx.HTTPError`` for network errors.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise TargetForbidden(f"{url!r} is not a URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetForbidden(f"{url!r} is not an http(s) URL")
    target = parsed
    extensions: dict[str, str] = {}
    all_headers = dict(headers)
    if not allow_private:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        address = checked_addresses(parsed.host, port)[0]
        target = parsed.copy_with(host=address.split("%")[0])
        all_headers["Host"] = parsed.netloc.decode("ascii").rpartition("@")[2]
        if parsed.scheme == "https":
            extensions["sni_hostname"] = parsed.host
    # trust_env=False: an HTTP(S)_PROXY of the environment would dial the name itself.
    with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout) as client:
        return client.post(target, content=content, headers=all_headers, extensions=extensions)
