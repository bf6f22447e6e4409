"""Once wrote a periodic task here, frozen at migrate time. Beat now syncs its schedule from
the settings at every start (core.beat), which also removes what this migration wrote; the
migration stays, empty, so migration history is unchanged."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("orders", "0004_alert"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations: list = []
