"""Print where the platform listens and the demo logins (``make run``)."""

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from registry.data import demo


class Command(BaseCommand):
    help = "Print the URLs and demo logins of a local platform."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--port", default="8000")
        parser.add_argument("--broker-port", default="50051")
        parser.add_argument("--telemetry-port", default="50052")

    def handle(self, *args: Any, **options: Any) -> None:
        tokens_file = settings.VAR_DIR / "demo-tokens.json"
        tokens = json.loads(tokens_file.read_text()) if tokens_file.exists() else {}
        out = self.stdout
        out.write("")
        out.write(self.style.SUCCESS("Compute Interconnect is starting"))
        out.write(f"  portal     http://127.0.0.1:{options['port']}/")
        out.write(f"  REST API   http://127.0.0.1:{options['port']}/api/v1/  (docs: /api/docs/)")
        out.write(f"  gRPC       127.0.0.1:{options['broker_port']}  (broker: interconnect CLI)")
        out.write(f"  telemetry  127.0.0.1:{options['telemetry_port']}  (agents' heartbeats, gRPC)")
        out.write(f"  demo logins (password: {demo.DEMO_PASSWORD})")
        for user in demo.USERS:
            token = tokens.get(user["username"], "")
            out.write(
                f"    {user['username']:<14} {user['role']:<7} of {user['org']:<16} token {token}"
            )
        out.write("")
