"""Domain errors of the broker; each names its entry of the error catalog (``protos.errors``),
which says how every door answers it."""

from protos.errors import ERRORS, Catalogued


class CapacityExhausted(Catalogued, Exception):
    """Not enough free capacity for the request (HTTP 409, gRPC RESOURCE_EXHAUSTED).

    ``code`` is a stable reason code (``booking.capacity_exceeded``, ``booking.no_placement``,
    ``quota.concurrent_accelerators``...), ``detail`` a human sentence.
    """

    spec = ERRORS["booking.capacity_exceeded"]

    def __init__(self, detail: str, *, code: str = "booking.capacity_exceeded") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return self.code


class QuotaExceeded(CapacityExhausted):
    """The AI firm's quota refuses the booking; the code names the quota."""


class RetryableConflict(Catalogued, Exception):
    """A concurrent writer won (deadlock or serialization failure) and retries ran out.

    Retrying the same request (same idempotency key) is safe (HTTP 409, gRPC ABORTED).
    """

    spec = ERRORS["booking.conflict"]


class IdempotencyKeyReused(Catalogued, Exception):
    """An idempotency key the firm already used for another request (catalog entry
    ``booking.idempotency_key_reused``: HTTP 422, gRPC FAILED_PRECONDITION, CLI exit 1).

    The same key with the same request returns the first booking; with a different request it
    is refused, never answered with the earlier booking. 422 as the IETF draft on the
    ``Idempotency-Key`` header says for a key reused with another payload (409 is for a request
    still in progress); FAILED_PRECONDITION because the key is bound to a request already.
    """

    spec = ERRORS["booking.idempotency_key_reused"]
    code = spec.reason

    def __init__(self, key: str, booking: str) -> None:
        self.key = key
        self.booking = booking
        self.detail = (
            f'The idempotency key "{key}" was already used for another request '
            f"(booking {booking}). Send that request again to get its booking, or use a new key."
        )
        super().__init__(self.detail)

    def extra(self) -> dict[str, object]:
        return {"booking": self.booking}
