"""The database itself refuses UPDATE and DELETE on audit entries."""

from django.db import migrations

FORWARD = """
CREATE OR REPLACE FUNCTION orders_auditlog_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'orders_auditlog is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER orders_auditlog_no_update_delete
    BEFORE UPDATE OR DELETE ON orders_auditlog
    FOR EACH ROW EXECUTE FUNCTION orders_auditlog_append_only();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS orders_auditlog_no_update_delete ON orders_auditlog;
DROP FUNCTION IF EXISTS orders_auditlog_append_only();
"""


class Migration(migrations.Migration):
    dependencies = [("orders", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
