"""The refund beat tasks exist out of the box as periodic tasks of the DatabaseScheduler."""

from django.conf import settings
from django.db import migrations

SCHEDULES = (
    (
        "refunds: retry refunds waiting for the reserve",
        "refunds.tasks.refunds_retry_waiting",
        "REFUND_RETRY_INTERVAL_SECONDS",
    ),
    (
        "refunds: check sent refunds",
        "refunds.tasks.refunds_check_sent",
        "REFUND_CHECK_SWEEP_SECONDS",
    ),
)


def create_schedules(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, setting in SCHEDULES:
        interval, _ = IntervalSchedule.objects.get_or_create(
            every=getattr(settings, setting), period="seconds"
        )
        PeriodicTask.objects.update_or_create(
            name=name, defaults={"task": task, "interval": interval, "enabled": True}
        )


def remove_schedules(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, _, _ in SCHEDULES]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("refunds", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
