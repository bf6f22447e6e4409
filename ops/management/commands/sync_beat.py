"""Write Bronco's periodic tasks from the settings into beat's tables (beat does this itself
at every start; this command is for checking the result without starting beat)."""

from django.core.management.base import BaseCommand

from core.beat import beat_schedule_sync


class Command(BaseCommand):
    help = "Sync the beat schedule from CELERY_BEAT_SCHEDULE (interval settings). Idempotent."

    def handle(self, *args: object, **options: object) -> None:
        for name, seconds in sorted(beat_schedule_sync().items()):
            self.stdout.write(f"{name}: every {seconds} s")
