"""A booking event records a resale offer that expired unsold (the offer expiry sweep)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("brokers", "0007_market"),
    ]

    operations = [
        migrations.AlterField(
            model_name="bookingevent",
            name="kind",
            field=models.CharField(
                choices=[
                    ("created", "Created"),
                    ("status", "Status changed"),
                    ("dispatched", "Dispatched to a center"),
                    ("workload", "Workload state at a center"),
                    ("flagged", "A pool of the booking went degraded or offline"),
                    ("replaced", "Moved to other capacity"),
                    ("error", "Error"),
                    ("preempted", "Preempted by a reserved or priority booking"),
                    ("offered", "Offered for resale"),
                    ("withdrawn", "Resale offer withdrawn"),
                    ("expired", "Resale offer expired unsold"),
                    ("sold", "Resold to another firm"),
                    ("bought", "Bought from another firm"),
                ],
                max_length=12,
            ),
        ),
    ]
