"""Bronco's periodic tasks: one definition (`CELERY_BEAT_SCHEDULE` in settings), synced into
django-celery-beat's tables whenever beat starts.

`beat_schedule_sync` writes every entry of the setting (name, task, interval in seconds) and
removes entries of Bronco's own tasks that the setting no longer lists (a renamed entry, one
an older release wrote), so changing an interval setting takes effect at the next start of
beat and nothing is frozen at migrate time. Entries of other tasks (added by an operator in
the admin for something else) are left alone. Idempotent; `manage.py sync_beat` runs it by
hand.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery.schedules import schedule as celery_schedule
from django.conf import settings
from django.db import transaction
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler

logger = logging.getLogger(__name__)

# Tasks of these packages are Bronco's: their beat entries come only from the setting.
BRONCO_TASK_PREFIXES = ("orders.", "chain.", "trading.", "refunds.", "ops.", "core.")


def _seconds(entry: dict[str, Any]) -> int:
    every = entry["schedule"]
    if isinstance(every, celery_schedule):
        every = every.run_every
    if isinstance(every, timedelta):
        every = every.total_seconds()
    seconds = int(every)
    if seconds < 1:
        raise ValueError(f"beat entry for {entry['task']}: interval {every!r} is below 1 s")
    return seconds


def beat_schedule_sync() -> dict[str, int]:
    """Make the database schedule equal `settings.CELERY_BEAT_SCHEDULE` for Bronco's tasks.
    Returns {entry name: interval in seconds}. Raises ValueError for an entry whose schedule
    is not an interval of at least one second."""
    wanted = {name: _seconds(entry) for name, entry in settings.CELERY_BEAT_SCHEDULE.items()}
    with transaction.atomic():
        for name, seconds in wanted.items():
            entry = settings.CELERY_BEAT_SCHEDULE[name]
            interval, _ = IntervalSchedule.objects.get_or_create(
                every=seconds, period=IntervalSchedule.SECONDS
            )
            PeriodicTask.objects.update_or_create(
                name=name,
                defaults={
                    "task": entry["task"],
                    "interval": interval,
                    "crontab": None,
                    "solar": None,
                    "clocked": None,
                    "enabled": True,
                    "one_off": False,
                },
            )
        stale = PeriodicTask.objects.exclude(name__in=wanted).filter(
            task__regex=r"^(" + "|".join(p.replace(".", r"\.") for p in BRONCO_TASK_PREFIXES) + ")"
        )
        removed = list(stale.values_list("name", flat=True))
        stale.delete()
        PeriodicTasks.update_changed()
    if removed:
        logger.info("beat: removed entries no longer in the settings: %s", removed)
    logger.info("beat schedule synced from settings: %s", wanted)
    return wanted


class BroncoScheduler(DatabaseScheduler):
    """django-celery-beat's database scheduler that first syncs the schedule from settings."""

    def setup_schedule(self) -> None:
        beat_schedule_sync()
        super().setup_schedule()
