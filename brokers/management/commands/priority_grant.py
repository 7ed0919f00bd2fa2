"""``python manage.py priority_grant``: platform staff grant an organization the priority class.

    manage.py priority_grant ORG_SLUG --hours 500 --by USERNAME   # grant, or change the quota
    manage.py priority_grant ORG_SLUG --withdraw --by USERNAME
    manage.py priority_grant ORG_SLUG                             # show it

The same service as ``PUT /api/v1/priority-grants/<org>/`` and the admin's "Priority grants"
(``market.priority_grant_set``): ``--by`` names the platform staff member who grants it (the
change log records them, door ``cli``); anyone else is refused.
"""

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from brokers import market
from brokers.models import PriorityGrant
from registry.choices import Door
from registry.models import Organization


class Command(BaseCommand):
    help = "Grant (--hours), withdraw (--withdraw) or show an organization's priority class."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("organization", help="the organization's slug")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--hours", type=int, help="accelerator-hours of the grant")
        what.add_argument("--withdraw", action="store_true", help="withdraw the grant")
        parser.add_argument("--by", help="username of the platform staff member granting it")

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["organization"]).first()
        if org is None:
            raise CommandError(f"no organization {options['organization']!r}")
        if options["hours"] is None and not options["withdraw"]:
            grant = PriorityGrant.objects.filter(organization=org).first()
            self.stdout.write(
                f"{org.slug}: {grant.accelerator_hours} accelerator-hours"
                if grant
                else f"{org.slug}: no priority grant"
            )
            return
        actor = get_user_model().objects.filter(username=options["by"] or "").first()
        if actor is None:
            raise CommandError("give --by USERNAME: the platform staff member who grants it")
        try:
            grant = market.priority_grant_set(
                organization=org,
                actor=actor,
                door=Door.CLI,
                accelerator_hours=None if options["withdraw"] else options["hours"],
            )
        except PermissionDenied as exc:
            raise CommandError(str(exc)) from None
        except ValidationError as exc:
            raise CommandError(
                "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
            ) from None
        if grant is None:
            self.stdout.write(f"{org.slug}: priority grant withdrawn")
        else:
            self.stdout.write(f"{org.slug}: {grant.accelerator_hours} accelerator-hours granted")
