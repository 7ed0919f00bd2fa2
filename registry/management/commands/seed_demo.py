"""Create the demo tenants, users, centers and pools, and submit the pools for verification.

Idempotent: existing organizations, users and centers are left as they are. Writes the demo
users' API tokens to ``var/demo-tokens.json`` so that local agents and the CLI can use them.
"""

import json
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from registry import services
from registry.choices import Door, Status
from registry.data import demo
from registry.models import Accelerator, ApiToken, Center, Cluster, Membership, Organization


class Command(BaseCommand):
    help = "Create demo organizations, users, centers and pools (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--agent-host", default="127.0.0.1")
        parser.add_argument("--no-submit", action="store_true", help="Leave demo pools as drafts.")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        with transaction.atomic():
            orgs = {}
            for row in demo.ORGANIZATIONS:
                orgs[row["slug"]], _ = Organization.objects.get_or_create(
                    slug=row["slug"], defaults={"name": row["name"], "kind": row["kind"]}
                )
            users = {}
            for row in demo.USERS:
                user, created = User.objects.get_or_create(username=row["username"])
                if created:
                    user.set_password(demo.DEMO_PASSWORD)
                    user.is_staff = row["org"] == "interconnect"
                    user.save()
                Membership.objects.get_or_create(
                    user=user, defaults={"organization": orgs[row["org"]], "role": row["role"]}
                )
                users[row["username"]] = user

        tokens_file = settings.VAR_DIR / "demo-tokens.json"
        tokens = json.loads(tokens_file.read_text()) if tokens_file.exists() else {}
        for username, user in users.items():
            known = tokens.get(username)
            if (
                known
                and ApiToken.objects.filter(
                    user=user, revoked_at=None, key_id=known.split("_")[1]
                ).exists()
            ):
                continue
            _, tokens[username] = services.token_create(user=user, name="demo")
        tokens_file.write_text(json.dumps(tokens, indent=2))

        for spec in demo.CENTERS:
            actor = users[spec["operator"]]
            if Center.objects.filter(
                operator=actor.membership.organization, name=spec["name"]
            ).exists():
                continue
            center = services.center_register(
                actor=actor,
                door=Door.CLI,
                data={
                    "cluster": Cluster.objects.get(code=spec["cluster"]),
                    "name": spec["name"],
                    "latitude": spec["latitude"],
                    "longitude": spec["longitude"],
                    "pue": spec["pue"],
                    "green_power_share": spec["green_power_share"],
                    "agent_endpoint": f"{options['agent_host']}:{spec['agent_port']}",
                },
            )
            for pool_spec in spec["pools"]:
                data = dict(pool_spec)
                traits = data.pop("traits")
                data["accelerator"] = Accelerator.objects.get(slug=data["accelerator"])
                pool = services.pool_create(
                    actor=actor, door=Door.CLI, center=center, data=data, traits=traits
                )
                if not options["no_submit"] and pool.status == Status.DRAFT:
                    services.pool_submit(pool=pool, actor=actor, door=Door.CLI)
            self.stdout.write(f"created {center.national_id} {center.name}")
        self.stdout.write(self.style.SUCCESS(f"demo ready; tokens in {tokens_file}"))
