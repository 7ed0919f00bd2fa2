"""Who acts at a door: the type services and selectors take as ``actor`` or ``user``."""

from typing import TypeAlias

from django.contrib.auth.models import AnonymousUser, User

# A signed-in user of the project's user model (``AUTH_USER_MODEL``, Django's own), or nobody:
# what ``request.user`` is at the REST API and the portal, and what the gRPC doors resolve a
# bearer token to.
Actor: TypeAlias = User | AnonymousUser


def signed_in(actor: Actor | None) -> User | None:
    """The actor as the user a record names (``created_by``, ``actor``...), or None for
    anonymous and for no actor (the platform acting on its own)."""
    if isinstance(actor, User) and actor.is_authenticated:
        return actor
    return None
