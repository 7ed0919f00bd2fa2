from django.apps import AppConfig


class VerificationConfig(AppConfig):
    name = "verification"
    verbose_name = "Verification and tracking"

    def ready(self) -> None:
        from interconnect.metrics import register_gauge
        from verification import receivers  # noqa: F401  (connects the signal receivers)
        from verification.selectors import heartbeat_lag_seconds

        register_gauge(
            "interconnect_heartbeat_lag_seconds",
            "Age of the oldest last heartbeat among active pools.",
            heartbeat_lag_seconds,
        )
