"""The one bearer-token parser of every gRPC door (``authorization: Bearer <token>``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def bearer_from_header(header: str) -> str | None:
    """The token of an ``authorization`` header value, or None unless it is ``Bearer <token>``."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def bearer_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    """The bearer token of a call's invocation metadata, or None."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            return bearer_from_header(value)
    return None
