from django.apps import AppConfig


class BrokersConfig(AppConfig):
    name = "brokers"
    verbose_name = "Placement, booking and dispatch"

    def ready(self) -> None:
        # Connect the receivers of registry signals (status changes, pool size changes).
        from brokers import receivers  # noqa: F401
