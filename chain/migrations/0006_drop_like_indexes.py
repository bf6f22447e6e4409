"""Drop the `varchar_pattern_ops` (`*_like`) twins of the chain events' `name` index, declared in
Meta now, as orders 0016_drop_like_indexes explains."""

from django.db import migrations, models

from core.schema import like_twins_dropped


class Migration(migrations.Migration):
    dependencies = [
        ("chain", "0005_wtb_removed_open_index"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="chainevent",
                    name="name",
                    field=models.CharField(max_length=64),
                ),
                migrations.AddIndex(
                    model_name="chainevent",
                    index=models.Index(fields=["name"], name="chainevent_name"),
                ),
            ],
            database_operations=[
                like_twins_dropped(
                    "chain_chainevent",
                    indexes={"chain_chainevent_name_c8fcbe21": "chainevent_name"},
                    uniques={},
                    twins={"chain_chainevent_name_c8fcbe21_like": "name"},
                )
            ],
        )
    ]
