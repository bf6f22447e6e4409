"""Deploy the reference contracts to the configured chain, once: a second run reuses them."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from chain.client import chain_client
from chain.deployment import deployment_ensure


class Command(BaseCommand):
    help = "Deploy MockUSDT (dev chains), BroncoVault and one StockToken per listed symbol."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--redeploy", action="store_true", help="deploy a new set anyway")

    def handle(self, *args: object, **options: object) -> None:
        client = chain_client()
        chain_id = client.chain_id()
        if chain_id != settings.CHAIN_ID:
            self.stderr.write(f"node chain id {chain_id} != CHAIN_ID {settings.CHAIN_ID}")
            raise SystemExit(2)
        contracts, deployed = deployment_ensure(client=client, redeploy=bool(options["redeploy"]))
        verb = "deployed" if deployed else "reusing"
        self.stdout.write(f"{verb} contracts on chain {contracts.chain_id}")
        self.stdout.write(f"  vault {contracts.vault}")
        self.stdout.write(f"  usdt  {contracts.usdt}")
        for symbol, token in sorted(contracts.tokens.items()):
            self.stdout.write(f"  {symbol:<6} {token}")
