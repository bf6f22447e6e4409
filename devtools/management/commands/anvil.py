"""`manage.py anvil`: run the dev chain (anvil from npm) on CHAIN_RPC_URL's port, keeping its
state in CHAIN_ANVIL_STATE_PATH across restarts. For `make run`; tests start their own.
BRONCO_ANVIL_ARGS adds anvil options (space-separated): the end-to-end benchmark mines a
block a second with a large gas limit (`--block-time 1 --gas-limit 300000000`), since
automine stops mining once about a thousand transactions wait in anvil's pool."""

import os
from pathlib import Path
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run anvil for development (state kept across restarts)."

    def handle(self, *args: object, **options: object) -> None:
        port = urlparse(settings.CHAIN_RPC_URL).port or 8545
        state = Path(settings.BASE_DIR) / settings.CHAIN_ANVIL_STATE_PATH
        state.parent.mkdir(parents=True, exist_ok=True)
        binary = str(Path(settings.BASE_DIR) / settings.CHAIN_ANVIL_BIN)
        argv = [
            binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--chain-id",
            str(settings.CHAIN_ID),
            "--state",
            str(state),
            "--state-interval",
            "5",
            *os.environ.get("BRONCO_ANVIL_ARGS", "").split(),
        ]
        os.execv(binary, argv)
