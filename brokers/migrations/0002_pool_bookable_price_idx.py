"""An index on the registry's pool table that serves the broker's candidate query.

It lives here, not in the registry, because only the broker's query needs it (dependencies
point brokers -> registry). Partial: only active pools are bookable.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("brokers", "0001_initial"),
        ("registry", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(
            sql=(
                "CREATE INDEX pool_bookable_price_idx ON registry_pool "
                "(accelerator_id, price_per_accelerator_hour, id) WHERE status = 'active'"
            ),
            reverse_sql="DROP INDEX pool_bookable_price_idx",
        ),
    ]
