from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "registry"
    verbose_name = "National compute registry"

    def ready(self) -> None:
        from registry import checks, signals, webhooks  # noqa: F401 (checks registers itself)

        signals.status_changed.connect(webhooks.on_status_changed, dispatch_uid="webhooks-status")
