"""`python manage.py reserve_status`: the vault's USDT balance, what is committed to
refunds and settlements not yet paid, the configured floor, and the headroom left."""

from django.core.management.base import BaseCommand, CommandError

from chain.exceptions import ChainUnavailable
from core.money import units_to_usdt
from refunds.selectors import reserve_status


class Command(BaseCommand):
    help = "Show the vault's USDT reserve: balance, committed, floor, headroom."

    def handle(self, *args: object, **options: object) -> None:
        try:
            status = reserve_status()
        except ChainUnavailable as exc:
            raise CommandError(
                f"cannot read the vault balance: {exc}; check CHAIN_RPC_URL and the node"
            ) from exc
        if status is None:
            raise CommandError(
                "no vault is configured: set CHAIN_VAULT_ADDRESS or run deploy_contracts"
            )
        for label, units in (
            ("balance", status.balance),
            ("committed", status.committed),
            ("floor", status.floor),
            ("headroom", status.headroom),
        ):
            self.stdout.write(f"{label:<10} {units_to_usdt(units):>24} USDT")
        if status.headroom < 0:
            self.stdout.write(
                self.style.WARNING("The reserve is short: fund the vault before more is paid.")
            )
