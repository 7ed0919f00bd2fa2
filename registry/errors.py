"""Domain errors of the registry, mapped to HTTP and gRPC status codes at the doors."""

from django.core.exceptions import ValidationError


class StaleVersion(Exception):
    """The client changed an object from an outdated version (HTTP 409, gRPC ABORTED)."""

    def __init__(self, current: int) -> None:
        super().__init__(f"The object changed meanwhile; current version is {current}.")
        self.current = current


class IllegalTransition(ValidationError):
    """A lifecycle move that the transition table or the actor's role does not allow.

    A ``ValidationError`` on the ``status`` field, so every door answers it as bad input.
    """

    def __init__(self, message: str) -> None:
        super().__init__({"status": [message]})
