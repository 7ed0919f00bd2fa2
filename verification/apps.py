from django.apps import AppConfig


class VerificationConfig(AppConfig):
    name = "verification"
    verbose_name = "Verification and tracking"

    def ready(self) -> None:
        from verification import receivers  # noqa: F401  (connects the signal receivers)
