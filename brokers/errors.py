"""Domain errors of the broker, mapped to HTTP and gRPC status codes at the doors."""


class CapacityExhausted(Exception):
    """Not enough free capacity for the request (HTTP 409, gRPC RESOURCE_EXHAUSTED).

    ``code`` is a stable reason code (``booking.capacity_exceeded``, ``booking.no_placement``,
    ``quota.concurrent_accelerators``...), ``detail`` a human sentence.
    """

    def __init__(self, detail: str, *, code: str = "booking.capacity_exceeded") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class QuotaExceeded(CapacityExhausted):
    """The AI firm's quota refuses the booking; the code names the quota."""


class RetryableConflict(Exception):
    """A concurrent writer won (deadlock or serialization failure) and retries ran out.

    Retrying the same request (same idempotency key) is safe (HTTP 409, gRPC ABORTED).
    """
