"""`python manage.py verify_audit`: walk the audit hash chain and report the first break.

Exit status 0 when every entry links to the one before and matches its own hash; 1 (with
the seq and the reason on stderr) at the first entry that was altered, removed or
reordered. Read-only: safe to run at any time, e.g. from cron or a monitoring probe.
"""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.audit import audit_verify


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exit non-zero at the first broken link."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size",
            type=int,
            default=2000,
            help="rows read per database round trip (default 2000)",
        )

    def handle(self, *args: object, batch_size: int, **options: object) -> None:
        checked, broken = audit_verify(batch_size=batch_size)
        if broken is None:
            self.stdout.write(self.style.SUCCESS(f"Checked {checked} audit entries: chain intact."))
            return
        self.stdout.write(f"Checked {checked} audit entries before the break.")
        raise CommandError(
            f"audit chain broken at seq {broken.seq}: {broken.reason}. "
            f"Entries 1..{checked} verify; inspect seq {broken.seq} and what follows it."
        )
