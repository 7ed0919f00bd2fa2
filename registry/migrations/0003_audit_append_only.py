"""The change log and lifecycle history are append-only in PostgreSQL (RELIABILITY S10).

Triggers refuse DELETE, and UPDATE of anything but the nullable actor/owner references (which
``ON DELETE SET NULL`` must still be able to clear). SQLite (the embedded default) has no such
guard; production runs PostgreSQL.
"""

from django.db import migrations

TABLES = {
    "registry_changerecord": ["time", "door", "request_id", "object_type", "object_id",
                              "object_key", "object_repr", "action", "before", "after"],
    "registry_lifecycletransition": ["object_type", "object_id", "object_key", "from_status",
                                     "to_status", "reason", "door", "time"],
}


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, columns in TABLES.items():
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in columns)
        schema_editor.execute(f"""
            CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    RAISE EXCEPTION '{table} is append-only' USING ERRCODE = 'insufficient_privilege';
                END IF;
                IF {changed} THEN
                    RAISE EXCEPTION '{table} is append-only' USING ERRCODE = 'insufficient_privilege';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
                FOR EACH ROW EXECUTE FUNCTION {table}_append_only();
        """)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table};"
                              f"DROP FUNCTION IF EXISTS {table}_append_only();")


class Migration(migrations.Migration):
    dependencies = [("registry", "0002_webhooks")]
    operations = [migrations.RunPython(forwards, backwards)]
