"""`python manage.py refund_order ORDER_ID --reason "..." [--amount USDT] [--operator NAME]`:
ask for a manual refund of a deposit. Below the approval threshold it is paid at once (or
waits for the vault reserve); above it, a second operator runs `approve_refund`. Refusals
exit non-zero with why and what to do."""

import getpass
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.money import USDT_DECIMALS, units_to_usdt, usdt_to_units
from refunds.exceptions import RefundRefused
from refunds.models import RefundStatus
from refunds.services import refund_request


def parse_usdt(text: str) -> int:
    """A positive USDT amount with at most 6 decimals, as base units; CommandError otherwise."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise CommandError(
            f"--amount {text!r} is not a number: give USDT like 125 or 125.5"
        ) from None
    if not value.is_finite() or value <= 0:
        raise CommandError(f"--amount {text!r} must be a positive number of USDT")
    if value != value.quantize(Decimal(1).scaleb(-USDT_DECIMALS)):
        raise CommandError(f"--amount {text!r} has more than {USDT_DECIMALS} decimals")
    return usdt_to_units(value)


def default_operator() -> str:
    return f"cli:{getpass.getuser()}"


class Command(BaseCommand):
    help = "Request a manual refund of a deposit order (audited; large ones need approval)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("order_id", type=int, help="the order's id (Bronco's, not on-chain)")
        parser.add_argument("--reason", required=True, help="why the user is refunded")
        parser.add_argument(
            "--amount", help="USDT to refund, e.g. 125.5 (default: everything that remains)"
        )
        parser.add_argument("--operator", default=None, help="who asks (default: cli:<login name>)")

    def handle(self, *args: object, **options: object) -> None:
        amount = None if options["amount"] is None else parse_usdt(str(options["amount"]))
        operator = str(options["operator"] or default_operator())
        try:
            refund = refund_request(
                order_id=int(options["order_id"]),  # type: ignore[arg-type]
                reason=str(options["reason"]),
                requested_by=operator,
                amount=amount,
            )
        except RefundRefused as exc:
            raise CommandError(f"refund refused: {exc}") from exc
        usdt = units_to_usdt(refund.amount)
        if refund.status == RefundStatus.AWAITING_APPROVAL:
            self.stdout.write(
                f"Refund {refund.pk} of {usdt} USDT for order {refund.order_id} awaits approval: "
                f"a second operator runs `python manage.py approve_refund {refund.pk} "
                "--operator NAME`."
            )
        elif refund.status == RefundStatus.WAITING_RESERVE:
            self.stdout.write(
                f"Refund {refund.pk} of {usdt} USDT for order {refund.order_id} waits for the "
                f"vault reserve ({refund.last_error}); it is sent once the vault is funded."
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Refund {refund.pk} of {usdt} USDT for order {refund.order_id}: "
                    f"{refund.status} {refund.tx_hash}".rstrip()
                )
            )
