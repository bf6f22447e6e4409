"""Drop the `varchar_pattern_ops` (`*_like`) twins of the audit log's `action` index and
`entry_hash` unique constraint, declared in Meta now, as orders 0016_drop_like_indexes
explains."""

from django.db import migrations, models

from core.schema import like_twins_dropped


class Migration(migrations.Migration):
    dependencies = [
        ("core", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="auditlog",
                    name="action",
                    field=models.CharField(max_length=64),
                ),
                migrations.AlterField(
                    model_name="auditlog",
                    name="entry_hash",
                    field=models.CharField(max_length=64),
                ),
                migrations.AddIndex(
                    model_name="auditlog",
                    index=models.Index(fields=["action"], name="auditlog_action"),
                ),
                migrations.AddConstraint(
                    model_name="auditlog",
                    constraint=models.UniqueConstraint(
                        fields=("entry_hash",), name="auditlog_unique_entry_hash"
                    ),
                ),
            ],
            database_operations=[
                like_twins_dropped(
                    "orders_auditlog",
                    indexes={"orders_auditlog_action_9ac26754": "auditlog_action"},
                    uniques={"orders_auditlog_entry_hash_key": "auditlog_unique_entry_hash"},
                    twins={
                        "orders_auditlog_action_9ac26754_like": "action",
                        "orders_auditlog_entry_hash_849e6de7_like": "entry_hash",
                    },
                )
            ],
        )
    ]
