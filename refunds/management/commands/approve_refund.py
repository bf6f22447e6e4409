"""`python manage.py approve_refund REFUND_ID --operator NAME`: a second operator approves a
refund above the threshold; it is then paid (or waits for the vault reserve)."""

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.money import units_to_usdt
from refunds.exceptions import RefundRefused
from refunds.services import refund_approve


class Command(BaseCommand):
    help = "Approve a manual refund awaiting a second operator (audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("refund_id", type=int)
        parser.add_argument("--operator", required=True, help="who approves (not who asked for it)")

    def handle(self, *args: object, **options: object) -> None:
        try:
            refund = refund_approve(
                refund_id=int(options["refund_id"]),  # type: ignore[arg-type]
                approver=str(options["operator"]),
            )
        except RefundRefused as exc:
            raise CommandError(f"approval refused: {exc}") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Refund {refund.pk} of {units_to_usdt(refund.amount)} USDT for order "
                f"{refund.order_id} approved by {refund.approved_by}: {refund.status} "
                f"{refund.tx_hash}".rstrip()
            )
        )
